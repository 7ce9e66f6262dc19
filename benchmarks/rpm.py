"""Benchmark the `rpm` checker beside `rpm -Va` on the same root.

    python benchmarks/rpm.py                      # 30 packages, 600 MB, warm and cold
    python benchmarks/rpm.py --size-mb 60 --repeat 1

Builds PACKAGES noarch RPMs holding SIZE_MB of incompressible data in all (uncompressed payloads, so
building stays quick) once in --workdir, installs them into a root with `rpm --root`, damages a few
files on purpose (bytes overwritten with the mtime kept, one truncated, one deleted), copies the
root onto the simulated network disk (benchmarks/common.py) and runs, interleaved, warm and cold:
`rpm -Va` (the peer), fsaudit with its defaults, fsaudit --jobs 1, and floors: the same files
hashed by 64 parallel `openssl dgst -sha256` processes (OpenSSL's SHA-256, as rpm's and fsaudit's),
and, warm only, by a bare Python loop in one process per core; cold, the files only read by 64 cat
processes (what the disk allows). fsaudit must verify what rpm verifies and find the same damage.
Goals (fsaudit / rpm -Va): warm <= 0.8, cold <= 0.2 (issue 18).
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

GOALS = {"fsaudit": {"warm": 0.8, "cold": 0.2}}
# Every file finding rpm -Va also lists (modified-after-install: a change with a later mtime).
DAMAGE_CODES = {"content-differs", "modified-after-install", "missing", "type-differs"}
SPEC = """\
Name: {name}
Version: 1.0
Release: 1
Summary: fsaudit benchmark package
License: MIT
BuildArch: noarch
AutoReqProv: no
%global debug_package %{{nil}}
%global __os_install_post %{{nil}}
%define _binary_payload w0.ufdio
%define _build_id_links none
%description
benchmark data
%install
mkdir -p %{{buildroot}}/usr/share/{name} %{{buildroot}}/etc
{commands}
echo "setting = 1" > %{{buildroot}}/etc/{name}.conf
%files
/usr/share/{name}
%config(noreplace) /etc/{name}.conf
"""


def build_packages(work: Path, packages: int, size_mb: int) -> list:
    top = work / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    per_package = size_mb * (1 << 20) // packages
    rpms = []
    for index in range(packages):
        name = f"bench{index:02d}"
        commands = []
        remaining, number = per_package, 0
        while remaining > 0:
            # A realistic mix: a few large files and a tail of small ones.
            size = min(remaining, 4 << 20 if number < 4 else 64 << 10)
            commands.append(f"head -c {size} /dev/urandom > %{{buildroot}}/usr/share/{name}/file{number:03d}")
            remaining -= size
            number += 1
        spec = top / "SPECS" / f"{name}.spec"
        spec.write_text(SPEC.format(name=name, commands="\n".join(commands)))
        subprocess.run(
            ["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True, capture_output=True
        )
        rpms.append(top / "RPMS" / "noarch" / f"{name}-1.0-1.noarch.rpm")
        print(f"\rbuilding packages: {index + 1}/{packages}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rpms


def make_root(work: Path, packages: int, size_mb: int) -> Path:
    rpms = build_packages(work, packages, size_mb)
    root = work / "root"
    root.mkdir()
    install = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts"]
    subprocess.run([*install, *map(str, rpms)], check=True, capture_output=True)
    shutil.rmtree(work / "rpmbuild")
    return root


def plant_damage(root: Path) -> set:
    victims = sorted(p for p in (root / "usr" / "share").rglob("file*") if p.is_file())
    chosen = random.Random(7).sample(victims, 5)
    for path in chosen[:3]:
        st = path.stat()
        with open(path, "r+b") as handle:
            handle.seek(4096)
            handle.write(b"\0DAMAGED BY THE BENCHMARK\0")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st = chosen[3].stat()
    os.truncate(chosen[3], 17)
    os.utime(chosen[3], ns=(st.st_atime_ns, st.st_mtime_ns))
    chosen[4].unlink()
    return {"/" + str(p.relative_to(root)) for p in chosen}


def rpm_outcome(completed: subprocess.CompletedProcess) -> dict:
    damage = set()
    for line in completed.stdout.decode(errors="replace").splitlines():
        fields = line.split()
        if fields and (fields[0] == "missing" or "5" in fields[0] or "S" in fields[0]):
            damage.add(fields[-1])
    return {"damage": damage}


def fsaudit_outcome(completed: subprocess.CompletedProcess) -> dict:
    check = json.loads(completed.stdout)["checks"][0]
    damage = {f["path"] for f in check["findings"] if f["code"] in DAMAGE_CODES}
    return {
        "damage": damage,
        "verified": check["stats"]["files_verified"],
        "reading": check["stats"].get("reading"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packages", type=int, default=30)
    parser.add_argument("--size-mb", type=int, default=600)
    run_options(parser, "rpm")
    args = parser.parse_args()
    require("rpm", "rpmbuild", "openssl")
    install_fsaudit()
    work = args.workdir / f"{args.packages}-{args.size_mb}"
    root = work / "root"
    if not (work / "damage.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        make_root(work, args.packages, args.size_mb)
        (work / "damage.json").write_text(json.dumps(sorted(plant_damage(root))))
    planted = set(json.loads((work / "damage.json").read_text()))
    files = [str(p.relative_to(root)) for p in (root / "usr" / "share").rglob("*") if p.is_file()]

    with torn_down_on_signals(), network_disk(root, delay_ms=args.delay_ms) as disk:
        rpm = ["rpm", "--root", str(disk), "--dbpath", "/var/lib/rpm", "-Va", "--nodeps", "--noscripts"]
        peer = Tool("rpm -Va", rpm, rpm_outcome, ok_codes=(1,))
        fsaudit = [
            *FSAUDIT,
            "audit",
            "--root",
            str(disk),
            "--check",
            "rpm",
            "--no-drop-cache",
            "--format",
            "json",
        ]
        tools = [
            peer,
            Tool("fsaudit", fsaudit, fsaudit_outcome, env=ENV, ok_codes=(2,)),
            Tool("fsaudit --jobs 1", fsaudit + ["--jobs", "1"], fsaudit_outcome, env=ENV, ok_codes=(2,)),
            # OpenSSL's SHA-256, as rpm's and fsaudit's (coreutils' sha256sum takes three times
            # the CPU here, which made the floor slower than rpm -Va itself).
            parallel_hash_floor(
                "64 x openssl sha256 (floor)", "openssl dgst -sha256 -r", [f"{disk}/{p}" for p in files]
            ),
            python_hash_floor("sha256", [f"{disk}/{p}" for p in files]),
            parallel_read_floor([f"{disk}/{p}" for p in files]),
        ]
        for mode in args.modes:
            compare(tools, mode, args.repeat, disk)
    peer_damage = next(iter(peer.outcome.values()))["damage"]
    if peer_damage != planted:
        sys.exit(
            f"rpm -Va did not report the planted damage: {sorted(peer_damage)} against {sorted(planted)}"
        )
    ours = next(iter(tools[1].outcome.values()))
    print(
        f"\nroot: {args.packages} packages, {ours['verified']:,} files verified; "
        f"{len(planted)} damaged on purpose"
    )
    print(f"fsaudit: {ours['reading']}")
    same_work(tools, peer, keys=("damage",))
    met = table(tools, peer, GOALS, args.modes)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
