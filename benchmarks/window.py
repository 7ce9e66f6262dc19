"""Benchmark: `fsaudit audit --check window` beside `find ROOT -newermt START ! -newermt END`.

Builds a tree of ENTRIES entries (default 30,000) with chosen mtimes (about 5 % of the files and a few
directories in the window), then runs both tools on it several times, warm cache for both, and
prints the best wall time of each and the ratio (goal: fsaudit at most 1.5x find).

    .venv/bin/python benchmarks/window.py [--entries 30000] [--runs 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

OLD = datetime(2013, 1, 1, tzinfo=timezone.utc).timestamp()
IN_WINDOW = datetime(2014, 6, 3, 12, tzinfo=timezone.utc).timestamp()
START, END = "2014-06-02T00:00:00+00:00", "2014-06-07T00:00:00+00:00"


def build_tree(root: str, entries: int, seed: int = 42) -> int:
    """A tree of `entries` entries: directories of about 20 entries, 4 levels deep; returns how
    many files have an mtime in the window."""
    rng = random.Random(seed)
    made = 0
    in_window = 0
    directories = [root]
    times = []
    while made < entries:
        parent = directories[rng.randrange(len(directories))] if len(directories) > 1 else root
        if parent.count(os.sep) - root.count(os.sep) < 4 and rng.random() < 0.05:
            path = os.path.join(parent, f"d{made}")
            os.mkdir(path)
            directories.append(path)
            times.append(path)
        else:
            path = os.path.join(parent, f"f{made}.dat")
            with open(path, "wb") as handle:
                handle.write(b"x" * rng.randrange(0, 512))
            hit = rng.random() < 0.05
            in_window += hit
            os.utime(path, (OLD, IN_WINDOW if hit else OLD + rng.randrange(0, 10**7)))
        made += 1
    # Directories last, deepest first: creating their entries changed their mtimes.
    for path in sorted(times, key=len, reverse=True):
        os.utime(path, (OLD, IN_WINDOW if rng.random() < 0.02 else OLD))
    os.utime(root, (OLD, OLD))
    return in_window


# An installed fsaudit has its bytecode compiled; let the warm-up run write it here too.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_time(command, runs: int) -> tuple:
    """The best wall time and the best CPU time (user + system) of `runs` runs: on a shared machine
    CPU time is the steadier of the two."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(runs):
        started, cpu = time.perf_counter(), _cpu()
        completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        if completed.returncode not in (0, 1):
            sys.exit(f"{command[0]} failed ({completed.returncode}): {completed.stderr.decode()[:500]}")
        best, best_cpu = min(best, elapsed), min(best_cpu, cpu)
    return best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", help="build the tree here and keep it")
    args = parser.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="fsaudit-bench-window-")
    root = os.path.join(base, "root")
    try:
        if os.path.exists(root):
            shutil.rmtree(root)
        os.makedirs(root)
        in_window = build_tree(root, args.entries)
        find = ["find", root, "-newermt", START, "!", "-newermt", END]
        fsaudit = [sys.executable, "-m", "fsaudit", "audit", "--root", root, "--check", "window"]
        fsaudit += ["--window", f"{START}..{END}", "--format", "json"]
        found = subprocess.run(find, capture_output=True, check=True).stdout.count(b"\n")
        for command in (find, fsaudit):  # warm the page cache for both
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        empty = os.path.join(base, "empty")
        os.makedirs(empty, exist_ok=True)
        startup = best_time(fsaudit[:5] + [empty] + fsaudit[6:], args.runs)
        find_time = best_time(find, args.runs)
        fsaudit_time = best_time(fsaudit, args.runs)
        print(f"tree: {args.entries:,} entries, {in_window:,} files in the window, find lists {found:,}")
        print("                          wall       CPU")
        print(f"find -newermt:            {find_time[0]:7.3f} s  {find_time[1]:7.3f} s")
        print(f"fsaudit --check window:   {fsaudit_time[0]:7.3f} s  {fsaudit_time[1]:7.3f} s")
        print(f"  same on an empty root:  {startup[0]:7.3f} s  {startup[1]:7.3f} s  (start-up, report)")
        for label, index in (("wall", 0), ("CPU", 1)):
            ratio = fsaudit_time[index] / find_time[index]
            walk = max(fsaudit_time[index] - startup[index], 1e-6) / find_time[index]
            print(
                f"ratio fsaudit/find ({label}): {ratio:6.2f}x (goal <= 1.5x); without start-up {walk:6.2f}x"
            )
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"largest child's peak RSS: {peak / 1024:8.1f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
