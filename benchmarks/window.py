"""Benchmark `fsaudit audit --check window` beside `find ROOT -newermt START ! -newermt END`.

    python benchmarks/window.py                      # 300,000 entries, warm and cold
    python benchmarks/window.py --entries 30000 --repeat 1 --modes warm

Builds a tree of ENTRIES entries (directories of about 20 entries, 4 levels; 5 % of the files and a
few directories modified in the window) once in --workdir, copies it onto the simulated network
disk (benchmarks/common.py) and runs, interleaved, warm and cold: find (the peer), fsaudit with its
defaults, fsaudit --jobs 1, and the floor: 64 finds at once, one per directory two levels down.
fsaudit must list the entries find lists. Also prints
fsaudit's start-up: the same audit of an empty root against the bare interpreter (goal: well under
0.1 s more). Goals (fsaudit / find): warm <= 1.3, cold <= 0.3 (issue 18).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ENV,
    FSAUDIT,
    Tool,
    compare,
    install_fsaudit,
    network_disk,
    run_options,
    same_work,
    table,
    timed,
    torn_down_on_signals,
)

GOALS = {"fsaudit": {"warm": 1.3, "cold": 0.3}}
OLD = datetime(2013, 1, 1, tzinfo=timezone.utc).timestamp()
IN_WINDOW = datetime(2014, 6, 3, 12, tzinfo=timezone.utc).timestamp()
START, END = "2014-06-02T00:00:00+00:00", "2014-06-07T00:00:00+00:00"


def build_tree(root: Path, entries: int, seed: int = 42) -> None:
    """A tree of `entries` entries: directories of about 20 entries, 4 levels deep."""
    rng = random.Random(seed)
    made = 0
    directories = [str(root)]
    created = []
    while made < entries:
        parent = directories[rng.randrange(len(directories))] if len(directories) > 1 else str(root)
        if parent.count(os.sep) - str(root).count(os.sep) < 4 and rng.random() < 0.05:
            path = os.path.join(parent, f"d{made}")
            os.mkdir(path)
            directories.append(path)
            created.append(path)
        else:
            path = os.path.join(parent, f"f{made}.dat")
            with open(path, "wb") as handle:
                handle.write(b"x" * rng.randrange(0, 512))
            hit = rng.random() < 0.05
            os.utime(path, (OLD, IN_WINDOW if hit else OLD + rng.randrange(0, 10**7)))
        made += 1
        if made % 10000 == 0:
            print(f"\rbuilding the tree: {made:,}/{entries:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    # Directories last, deepest first: creating their entries changed their mtimes.
    for path in sorted(created, key=len, reverse=True):
        os.utime(path, (OLD, IN_WINDOW if rng.random() < 0.02 else OLD))
    os.utime(root, (OLD, OLD))


def find_outcome(disk: Path):
    def check(completed: subprocess.CompletedProcess) -> dict:
        prefix = len(os.fsencode(str(disk)))
        changed = {line[prefix:] or b"/" for line in completed.stdout.splitlines()}
        return {"changed": changed}

    return check


def fsaudit_outcome(completed: subprocess.CompletedProcess) -> dict:
    check = json.loads(completed.stdout)["checks"][0]
    codes = ("modified-in-window", "changed-in-window", "directory-changed-in-window")
    changed = {os.fsencode(f["path"]) for f in check["findings"] if f["code"] in codes}
    if check["stats"].get("not_listed"):
        sys.exit(f"fsaudit listed only part of the changes: {check['stats']['not_listed']}")
    return {"changed": changed, "entries": check["stats"]["entries_scanned"]}


def startup(repeat: int) -> None:
    """fsaudit's start-up: an audit of an empty root against the bare interpreter."""
    with tempfile.TemporaryDirectory(prefix="fsaudit-empty-") as empty:
        command = [*FSAUDIT, "audit", "--root", empty, "--check", "window", "--window", f"{START}..{END}"]
        command += ["--format", "json"]
        bare = min(timed([FSAUDIT[0], "-c", "pass"], env=ENV)[0].wall for _ in range(repeat * 5))
        ours = min(timed(command, env=ENV)[0].wall for _ in range(repeat * 5))
    print(
        f"\nstart-up: fsaudit on an empty root {ours * 1000:.0f} ms, the bare interpreter "
        f"{bare * 1000:.0f} ms: {(ours - bare) * 1000:.0f} ms more "
        f"(goal: well under 100 ms; best of {repeat * 5})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=300_000)
    run_options(parser, "window")
    args = parser.parse_args()
    install_fsaudit()
    tree = args.workdir / str(args.entries) / "root"
    if not (tree.parent / "built").exists():
        shutil.rmtree(tree.parent, ignore_errors=True)
        tree.mkdir(parents=True)
        build_tree(tree, args.entries)
        (tree.parent / "built").write_text("")

    with torn_down_on_signals(), network_disk(tree, delay_ms=args.delay_ms) as disk:
        peer = Tool(
            "find -newermt", ["find", str(disk), "-newermt", START, "!", "-newermt", END], find_outcome(disk)
        )
        fsaudit = [*FSAUDIT, "audit", "--root", str(disk), "--check", "window", "--window", f"{START}..{END}"]
        fsaudit += ["--set", "window.list_limit=0", "--format", "json"]
        # The floor: the same walk by 64 finds at once, one per directory two levels down.
        parallel = (
            f'find "{disk}" -mindepth 2 -maxdepth 2 -type d -print0 | xargs -0 -r -P 64 -I{{}} '
            f"find {{}} -newermt {START} ! -newermt {END} > /dev/null"
        )
        tools = [
            peer,
            Tool("fsaudit", fsaudit, fsaudit_outcome, env=ENV, ok_codes=(1,)),
            Tool("fsaudit --jobs 1", fsaudit + ["--jobs", "1"], fsaudit_outcome, env=ENV, ok_codes=(1,)),
            Tool("64 x find (floor)", ["sh", "-c", parallel]),
        ]
        for mode in args.modes:
            compare(tools, mode, args.repeat, disk)
    outcome = next(iter(tools[1].outcome.values()))
    print(f"\ntree: {outcome['entries']:,} entries, {len(outcome['changed']):,} changed in the window")
    same_work(tools, peer, keys=("changed",))
    met = table(tools, peer, GOALS, args.modes)
    startup(args.repeat)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
