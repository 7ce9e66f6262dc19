"""Benchmark: `baseline` verification beside `sha256sum -c` on the same tree, in one run.

    .venv/bin/python benchmarks/baseline.py [--files 2000] [--megabytes 1024] [--tree DIR]

Both read a warm page cache (the tree is read once first), so they compare like with like.
Prints wall times and the ratio fsaudit / sha256sum (goal: at most 0.6 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_tree(root: Path, files: int, megabytes: int) -> None:
    size = max(1, megabytes * (1 << 20) // files)
    block = os.urandom(1 << 20)
    for number in range(files):
        directory = root / f"d{number % 50:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"f{number:06d}.bin", "wb") as handle:
            remaining = size
            while remaining:
                chunk = block[: min(remaining, len(block))]
                handle.write(chunk)
                remaining -= len(chunk)


def timed(command, **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--tree", type=Path, help="use this tree instead of generating one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsaudit-bench-") as scratch:
        scratch = Path(scratch)
        tree = args.tree or scratch / "tree"
        if args.tree is None:
            build_tree(tree, args.files, args.megabytes)
        manifest = scratch / "SHA256SUMS"
        paths = sorted(str(p) for p in tree.rglob("*") if p.is_file())
        with open(manifest, "w") as out:
            for start in range(0, len(paths), 500):
                subprocess.run(["sha256sum", "--", *paths[start : start + 500]], check=True, stdout=out)
        baseline = scratch / "tree.baseline"
        fsaudit = [sys.executable, "-m", "fsaudit"]
        subprocess.run(
            [*fsaudit, "baseline", "create", str(tree), "--output", str(baseline)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(["cat", *paths[:1]], stdout=subprocess.DEVNULL)
        timed(["sha256sum", "-c", "--quiet", str(manifest)])  # warms the cache for both
        peer = timed(["sha256sum", "-c", "--quiet", str(manifest)])
        ours = timed(
            [
                *fsaudit,
                "audit",
                "--check",
                "baseline",
                "--set",
                f"baseline.file={baseline}",
                "--no-drop-cache",
                "--format",
                "json",
            ]
        )
        total = sum(os.path.getsize(p) for p in paths)
        print(f"tree: {len(paths):,} files, {total / (1 << 20):,.0f} MiB, {os.cpu_count()} cores")
        print(f"sha256sum -c:             {peer:8.2f} s")
        print(f"fsaudit --check baseline: {ours:8.2f} s")
        print(f"ratio fsaudit / sha256sum: {ours / peer:.2f} (goal <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
