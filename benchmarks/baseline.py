"""Benchmark the `baseline` check beside `sha256sum -c` on the same tree.

    python benchmarks/baseline.py                     # 1,000 files, 300 MiB, warm and cold
    python benchmarks/baseline.py --files 200 --megabytes 50 --repeat 1

Builds the tree once in --workdir, records a baseline (`fsaudit baseline create --root`) and a
SHA256SUMS manifest of it, then changes a few files the way lost writes do (bytes overwritten, size
and mtime kept), copies the tree onto the simulated network disk (benchmarks/common.py) and runs,
interleaved, warm and cold: `sha256sum -c` (the peer), fsaudit with its defaults, fsaudit --jobs 1,
and floors: the same files hashed by 64 parallel `openssl dgst -sha256` processes (OpenSSL's
SHA-256, as fsaudit's; coreutils' takes three times the CPU) and, warm only, by a bare Python loop
in one process per core; cold, the files only read by 64 cat processes (what the disk allows).
fsaudit must verify every file and find the files sha256sum finds. Goals (fsaudit / sha256sum -c):
warm <= 0.6, cold <= 0.2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ENV,
    FSAUDIT,
    Tool,
    compare,
    install_fsaudit,
    network_disk,
    parallel_hash_floor,
    parallel_read_floor,
    python_hash_floor,
    require,
    run_options,
    same_work,
    table,
    torn_down_on_signals,
)

GOALS = {"fsaudit": {"warm": 0.6, "cold": 0.2}}


def build(work: Path, files: int, megabytes: int) -> set:
    tree = work / "tree"
    size = max(1, megabytes * (1 << 20) // files)
    block = os.urandom(1 << 20)
    for number in range(files):
        directory = tree / f"d{number % 50:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"f{number:06d}.bin", "wb") as handle:
            remaining = size
            while remaining:
                chunk = block[(number * 4099) % 4096 :][: min(remaining, len(block) - 4096)]
                handle.write(chunk)
                remaining -= len(chunk)
    # mkfs.ext4 -d copies whole seconds of the times: so must the baseline have them.
    for path in tree.rglob("*"):
        st = path.stat()
        os.utime(path, (int(st.st_atime), int(st.st_mtime)))
    subprocess.run(
        [*FSAUDIT, "baseline", "create", "/", "--root", str(tree), "--output", str(work / "tree.baseline")],
        check=True,
        env=ENV,
    )
    paths = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    with open(work / "SHA256SUMS", "w") as out:
        for start in range(0, len(paths), 500):
            subprocess.run(["sha256sum", "--", *paths[start : start + 500]], check=True, stdout=out, cwd=tree)
    damaged = set()
    for path in random.Random(7).sample(paths, 3):
        full = tree / path
        st = full.stat()
        with open(full, "r+b") as handle:
            handle.seek(st.st_size // 2)
            handle.write(b"\0" * 4096)
        os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
        damaged.add("/" + path)
    return damaged


def sha256sum_outcome(total: int):
    def check(completed: subprocess.CompletedProcess) -> dict:
        failed = {
            "/" + line.rsplit(":", 1)[0]
            for line in completed.stdout.decode(errors="replace").splitlines()
            if line.endswith(": FAILED")
        }
        return {"verified": total, "damage": failed}

    return check


def fsaudit_outcome(completed: subprocess.CompletedProcess) -> dict:
    check = json.loads(completed.stdout)["checks"][0]
    damage = {f["path"] for f in check["findings"] if f["code"] == "silent-change"}
    return {
        "verified": check["stats"]["files_verified"],
        "damage": damage,
        "reading": check["stats"].get("reading"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=300)
    run_options(parser, "baseline")
    args = parser.parse_args()
    require("sha256sum", "openssl")
    install_fsaudit()
    work = args.workdir / f"{args.files}-{args.megabytes}"
    if not (work / "damage.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "damage.json").write_text(json.dumps(sorted(build(work, args.files, args.megabytes))))
    planted = set(json.loads((work / "damage.json").read_text()))
    lines = (work / "SHA256SUMS").read_text().splitlines()

    with torn_down_on_signals(), network_disk(work / "tree", delay_ms=args.delay_ms) as disk:
        manifest = str(work / "SHA256SUMS")
        paths = [f"{disk}/{line.split('  ', 1)[1]}" for line in lines]
        peer = Tool(
            "sha256sum -c",
            ["sh", "-c", f'cd "{disk}" && exec sha256sum -c "{manifest}"'],
            sha256sum_outcome(len(lines)),
            ok_codes=(1,),
        )
        fsaudit = [*FSAUDIT, "audit", "--root", str(disk), "--check", "baseline", "--no-drop-cache"]
        fsaudit += ["--set", f"baseline.file={work / 'tree.baseline'}", "--format", "json"]
        tools = [
            peer,
            Tool("fsaudit", fsaudit, fsaudit_outcome, env=ENV, ok_codes=(2,)),
            Tool("fsaudit --jobs 1", fsaudit + ["--jobs", "1"], fsaudit_outcome, env=ENV, ok_codes=(2,)),
            # OpenSSL's SHA-256, as fsaudit's (coreutils' sha256sum takes three times the CPU).
            parallel_hash_floor("64 x openssl sha256 (floor)", "openssl dgst -sha256 -r", paths),
            python_hash_floor("sha256", paths),
            parallel_read_floor(paths),
        ]
        for mode in args.modes:
            compare(tools, mode, args.repeat, disk)
    if next(iter(peer.outcome.values()))["damage"] != planted:
        sys.exit("sha256sum -c did not report the planted damage")
    print(f"\ntree: {len(lines):,} files, {args.megabytes} MiB, {len(planted)} changed on purpose")
    print(f"fsaudit: {next(iter(tools[1].outcome.values()))['reading']}")
    same_work(tools, peer)
    met = table(tools, peer, GOALS, args.modes)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
