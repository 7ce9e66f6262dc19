"""Benchmark: the zodb checker beside ZODB's own `fstest` + `fsrefs` on the same generated Data.fs.

    .venv/bin/python benchmarks/zodb.py [--objects N] [--revisions R] [--keep DIR]

Builds a FileStorage with N persistent objects in an IOBTree, each written R times, then damages two
copies (a dangling reference; a zeroed 4 KiB block) and times, on all three files:
  - `python -m ZODB.scripts.fstest Data.fs`  (structure; stops at the first error)
  - `python -m ZODB.scripts.fsrefs Data.fs`  (loads every current object, checks its references)
  - `fsaudit audit --check zodb`             (both, in one read-only pass plus the current records)
Every tool reads a warm page cache (the file was just written), like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fixtures.zodb import write_many  # noqa: E402


def timed(command):
    """(wall seconds, CPU seconds of the child, completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, completed


def best_of(runs, command):
    """The fastest of `runs` runs (the machine may be shared: the minimum is the least disturbed)."""
    results = [timed(command) for _ in range(runs)]
    return min(results, key=lambda result: result[0])


def damage(source: str, target: str, how: str) -> None:
    """A copy of `source` with one kind of damage: `dangling` rewrites the oid of the object written
    last (so the root references a missing object); `zeroed` zeroes a 4 KiB block in the middle."""
    from ZODB.FileStorage import FileIterator

    shutil.copy(source, target)
    if how == "zeroed":
        offset = os.path.getsize(target) // 2 // 4096 * 4096
        with open(target, "r+b") as handle:
            handle.seek(offset)
            handle.write(bytes(4096))
        return
    iterator = FileIterator(source)
    try:
        last = [record.pos for txn in iterator for record in txn if record.oid != bytes(8)][-1]
    finally:
        iterator.close()
    with open(target, "r+b") as handle:
        handle.seek(last)
        handle.write(struct.pack(">Q", 0xFFFFFF))


def clear(path: str) -> None:
    """Remove the lock and temporary files ZODB leaves beside a Data.fs (keep its index)."""
    for suffix in (".lock", ".tmp"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--revisions", type=int, default=2)
    parser.add_argument("--keep", help="directory to build in and keep")
    parser.add_argument("--runs", type=int, default=1, help="runs per tool; the fastest counts")
    args = parser.parse_args()
    directory = args.keep or tempfile.mkdtemp(prefix="fsaudit-zodb-bench-")
    os.makedirs(directory, exist_ok=True)
    clean = os.path.join(directory, "Data.fs")
    if not os.path.exists(clean):
        start = time.perf_counter()
        write_many(clean, args.objects, revisions=args.revisions)
        print(f"built {clean}: {os.path.getsize(clean) / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    clear(clean)
    python = sys.executable
    fsaudit = [python, "-m", "fsaudit", "audit", "--check", "zodb", "--format", "json", "--no-drop-cache"]
    files = [("clean", clean)]
    for how in ("dangling", "zeroed"):
        path = os.path.join(directory, how, "Data.fs")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        damage(clean, path, how)
        # Both tools get the index ZODB wrote (as on a real server): fsrefs uses it, fsaudit checks it.
        shutil.copy(clean + ".index", path + ".index")
        files.append((how, path))
    total_ours = total_peer = cpu_ours = cpu_peer = 0.0
    try:
        for label, path in files:
            fstest_s, fstest_cpu, fstest = best_of(args.runs, [python, "-m", "ZODB.scripts.fstest", path])
            fsrefs_s, fsrefs_cpu, fsrefs = best_of(args.runs, [python, "-m", "ZODB.scripts.fsrefs", path])
            clear(path)
            ours_s, ours_cpu, ours = best_of(args.runs, [*fsaudit, "--set", f"zodb.paths={path}"])
            check = json.loads(ours.stdout)["checks"][0]
            codes = sorted({f["code"] for f in check["findings"]} - {"storage-checked"})
            peer = fstest_s + fsrefs_s
            total_ours += ours_s
            total_peer += peer
            cpu_ours += ours_cpu
            cpu_peer += fstest_cpu + fsrefs_cpu
            fstest_says = (fstest.stderr.strip().splitlines() or ["no errors"])[-1][-100:]
            fsrefs_says = fsrefs.stdout.count("refers to invalid object")
            fsrefs_error = (fsrefs.stderr.strip().splitlines() or [""])[-1][-100:]
            print(f"\n{label}: {os.path.getsize(path) / 1e6:.1f} MB")
            print(
                f"  fstest  {fstest_s:7.2f} s wall {fstest_cpu:7.2f} s CPU  exit {fstest.returncode}: ",
                end="",
            )
            print(fstest_says)
            print(
                f"  fsrefs  {fsrefs_s:7.2f} s wall {fsrefs_cpu:7.2f} s CPU  exit {fsrefs.returncode}: ",
                end="",
            )
            print(f"{fsrefs_says} objects with invalid references {fsrefs_error}")
            print(f"  fsaudit {ours_s:7.2f} s wall {ours_cpu:7.2f} s CPU  exit {ours.returncode}: ", end="")
            print(", ".join(codes))
            dangling = [f for f in check["findings"] if f["code"] == "dangling-reference"]
            print(f"  objects with dangling references: fsrefs {fsrefs_says}, fsaudit {len(dangling)}")
            print(f"  ratio fsaudit / (fstest + fsrefs): wall {ours_s / peer:.2f}")
        print(f"\nall files: wall ratio {total_ours / total_peer:.2f}, ", end="")
        print(f"CPU ratio {cpu_ours / cpu_peer:.2f} (goal <= 0.5)")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
