"""Benchmark the `debian` checker against `dpkg --verify` and `debsums` on the same root.

    python benchmarks/debian.py                    # build a 1 GB, 25,000-file root and compare
    python benchmarks/debian.py --size-mb 200 --files 5000
    python benchmarks/debian.py --root /mnt/image  # an existing root

The root is built from real packages (dpkg-deb, dpkg --root). Every tool runs warm (the tree is read
once first, and fsaudit runs with --no-drop-cache, so all three read from the page cache), or with
--cold every tool starts from an empty page cache and reads the disk. The floor is
bytes ÷ (MD5 speed of one core × cores): what perfect parallel hashing would take.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fixtures.debian import install, make_deb, make_root  # noqa: E402


def build_root(workdir: Path, size_mb: int, files: int, packages: int) -> Path:
    """A root of `packages` packages holding `files` files of `size_mb` MB in all."""
    rng = random.Random(42)
    total = size_mb << 20
    # Sizes spread like a real system's (many small files, a few big ones), scaled to the total.
    weights = [rng.paretovariate(1.2) for _ in range(files)]
    scale = total / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    blob = os.urandom(max(sizes) + 4096)
    debs = []
    per_package = -(-files // packages)
    for number in range(packages):
        chunk = sizes[number * per_package : (number + 1) * per_package]
        if not chunk:
            break
        content = {}
        for index, size in enumerate(chunk):
            start = rng.randrange(0, 4096)
            content[f"/usr/lib/bench{number}/d{index % 16}/f{index}"] = blob[start : start + size]
        debs.append(make_deb(workdir / "debs", f"bench{number}", files=content, compression="none"))
        print(f"\rbuilding packages: {len(debs)}/{packages}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    root = make_root(workdir / "root")
    for start in range(0, len(debs), 50):
        install(root, *debs[start : start + 50])
        print(f"\rinstalling: {min(start + 50, len(debs))}/{len(debs)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    shutil.rmtree(workdir / "debs")
    return root


def warm(root: Path) -> int:
    """Read every file once so every tool starts with the same page cache; returns the bytes."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    while True:
                        chunk = handle.read(1 << 20)
                        if not chunk:
                            break
                        total += len(chunk)
    return total


def drop_page_cache() -> None:
    """Empty the page cache so the next tool reads the disk (cold); needs root."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def md5_speed() -> float:
    """Bytes per second one core hashes with MD5."""
    data = os.urandom(64 << 20)
    # CPU time, not wall time: on a shared machine the wall time also counts waiting for a CPU.
    started = time.thread_time()
    hashlib.md5(data).hexdigest()
    return len(data) / (time.thread_time() - started)


def timed(command, **kwargs):
    """Wall seconds, CPU seconds (user + system) and the outcome of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (wall, cpu), completed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", help="benchmark this existing root instead of building one")
    parser.add_argument("--size-mb", type=int, default=1024, help="total size of the built root (MB)")
    parser.add_argument("--files", type=int, default=25_000, help="number of files in the built root")
    parser.add_argument("--packages", type=int, default=250, help="number of packages in the built root")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="fsaudit --jobs")
    parser.add_argument("--keep", action="store_true", help="keep the built root")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before each tool (needs root): all three read the disk",
    )
    args = parser.parse_args()

    workdir = None
    if args.root:
        root = Path(args.root)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="fsaudit-bench-debian-"))
        root = build_root(workdir, args.size_mb, args.files, args.packages)
    try:
        print(f"root: {root}", file=sys.stderr)
        warmed = warm(root)
        speed = md5_speed()
        cores = os.cpu_count() or 1
        results = {}
        prepare = drop_page_cache if args.cold else (lambda: None)
        prepare()
        results["dpkg --verify"], dpkg = timed(["dpkg", f"--root={root}", "--verify"])
        debsums = shutil.which("debsums")
        if debsums:
            prepare()
            results["debsums -a"], _ = timed([debsums, "-a", "-s", f"--root={root}"])
        command = [sys.executable, "-m", "fsaudit", "audit", "--root", str(root), "--check", "debian"]
        command += ["--no-drop-cache", "--format", "json", "--jobs", str(args.jobs)]
        prepare()
        results["fsaudit"], run = timed(command, cwd=REPO)
        report = json.loads(run.stdout)
        check = next(c for c in report["checks"] if c["name"] == "debian")
        hashed = check["stats"].get("bytes_hashed", 0)
        floor = hashed / (speed * cores)
        print(
            f"files verified: {check['stats'].get('files_verified', 0):,}; "
            f"bytes hashed: {hashed / 1e6:,.0f} MB "
            f"(tree read to warm the cache: {warmed / 1e6:,.0f} MB); fsaudit status: {check['status']}; "
            f"dpkg --verify lines: {len(dpkg.stdout.splitlines())}"
        )
        print(f"MD5 speed: {speed / 1e6:,.0f} MB/s per core x {cores} cores -> floor {floor:.2f} s")
        # On a shared machine the wall time also counts waiting for a CPU; the CPU time does not.
        print(f"{'':15} {'wall':>8}   {'cpu':>8}")
        for name, (wall, cpu) in results.items():
            print(f"{name:15} {wall:8.2f} s {cpu:8.2f} s")
        fsaudit = results["fsaudit"]
        dpkg_time = results["dpkg --verify"]
        print(
            f"fsaudit / dpkg --verify: wall {fsaudit[0] / dpkg_time[0]:.2f} (goal <= 0.6), "
            f"cpu {fsaudit[1] / dpkg_time[1]:.2f}"
        )
        if "debsums -a" in results:
            debsums_time = results["debsums -a"]
            print(
                f"fsaudit / debsums -a:    wall {fsaudit[0] / debsums_time[0]:.2f}, "
                f"cpu {fsaudit[1] / debsums_time[1]:.2f}"
            )
        if floor:
            print(f"fsaudit / floor:         wall {fsaudit[0] / floor:.2f} (goal <= 1.3)")
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {cores} cores")
    finally:
        if workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir:
            print(f"kept {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
