"""Benchmark: the zodb checker beside ZODB's own `fstest` + `fsrefs` on the same generated Data.fs.

    .venv/bin/python benchmarks/zodb.py [--objects N] [--revisions R] [--keep DIR]

Builds a FileStorage with N persistent objects in an IOBTree, each written R times, then damages a
copy (a dangling reference and a zeroed block) and times, on both files:
  - `python -m ZODB.scripts.fstest Data.fs`  (structure; stops at the first error)
  - `python -m ZODB.scripts.fsrefs Data.fs`  (loads every current object, checks its references)
  - `fsaudit audit --check zodb`             (both, in one read-only pass plus the current records)
Every tool reads a warm page cache (the file was just written), like for like.
"""

from __future__ import annotations

import argparse
import json
import os
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
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - start, completed


def damage(source: str, target: str) -> None:
    """A copy of `source` with one record's oid rewritten (so its referrer dangles)."""
    shutil.copy(source, target)
    with open(target, "r+b") as handle:
        handle.seek(4)
        header = handle.read(23)
        tlen = struct.unpack(">Q", header[8:16])[0]
        pos = 4 + tlen + 8  # second transaction: the first objects of the tree
        handle.seek(pos)
        header = handle.read(23)
        ulen, dlen, elen = struct.unpack(">HHH", header[17:23])
        record = pos + 23 + ulen + dlen + elen
        handle.seek(record)
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
    args = parser.parse_args()
    directory = args.keep or tempfile.mkdtemp(prefix="fsaudit-zodb-bench-")
    os.makedirs(directory, exist_ok=True)
    clean = os.path.join(directory, "Data.fs")
    if not os.path.exists(clean):
        start = time.perf_counter()
        write_many(clean, args.objects, revisions=args.revisions)
        print(f"built {clean}: {os.path.getsize(clean) / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    clear(clean)
    damaged_dir = os.path.join(directory, "damaged")
    os.makedirs(damaged_dir, exist_ok=True)
    damaged = os.path.join(damaged_dir, "Data.fs")
    damage(clean, damaged)
    # Both tools get the index ZODB wrote (as on a real server): fsrefs uses it, fsaudit checks it.
    shutil.copy(clean + ".index", damaged + ".index")
    python = sys.executable
    fsaudit = [python, "-m", "fsaudit", "audit", "--check", "zodb", "--format", "json", "--no-drop-cache"]
    try:
        for label, path in (("clean", clean), ("damaged", damaged)):
            fstest_s, fstest = timed([python, "-m", "ZODB.scripts.fstest", path])
            fsrefs_s, fsrefs = timed([python, "-m", "ZODB.scripts.fsrefs", path])
            clear(path)
            ours_s, ours = timed([*fsaudit, "--set", f"zodb.paths={path}"])
            report = json.loads(ours.stdout)
            check = report["checks"][0]
            codes = sorted({f["code"] for f in check["findings"]})
            peer = fstest_s + fsrefs_s
            print(f"\n{label}: {os.path.getsize(path) / 1e6:.1f} MB")
            print(f"  fstest  {fstest_s:7.2f} s  exit {fstest.returncode}  {fstest.stderr.strip()[-120:]}")
            dangling = fsrefs.stdout.count("refers to invalid object")
            print(f"  fsrefs  {fsrefs_s:7.2f} s  exit {fsrefs.returncode}  invalid references: {dangling}")
            print(f"  fsaudit {ours_s:7.2f} s  exit {ours.returncode}  codes: {', '.join(codes)}")
            found = len([f for f in check["findings"] if f["code"] == "dangling-reference"])
            print(f"  dangling references: fsrefs {dangling}, fsaudit {found}")
            print(f"  ratio fsaudit / (fstest + fsrefs) = {ours_s / peer:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
