"""Side by side on the same pgbench database: `pg_amcheck --all --heapallindexed` and
`fsaudit audit --check postgres`. Prints the wall times and the ratios (goal: at most 1.3x).

Run as root from the repository: `.venv/bin/python benchmarks/postgres.py --scale 10 --runs 3`.
All run warm (the database was just written and read once by each before timing). The goal compares
each tool as a user runs it: `pg_amcheck --all --heapallindexed` (one connection, its default) and
`fsaudit audit` with `--jobs` (default: all cores, fsaudit's default), which spreads the checks of a
database over that many connections. For information, the same number of connections for both is
timed too: one (`pg_amcheck --jobs 1`, `fsaudit --jobs 1`) and `--jobs` (both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fixtures.postgres import as_owner, copy_cluster, make_base_dir, make_template  # noqa: E402


def timed(command) -> tuple:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    return time.monotonic() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale factor (100 000 rows each)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs of each tool (the best counts)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="fsaudit's --jobs (default: all cores)"
    )
    args = parser.parse_args()

    base = make_base_dir("fsaudit-pgbench-")
    cluster = None
    try:
        template = make_template(base)
        cluster = copy_cluster(template)
        cluster.start()
        pgbench = [cluster.bin / "pgbench", "-h", cluster.sockets, "-p", cluster.port]
        print(f"pgbench -i -s {args.scale} ...", flush=True)
        as_owner(*pgbench, "-i", "-q", "-s", args.scale, "postgres")
        cluster.sql("VACUUM ANALYZE")
        size = cluster.sql("SELECT pg_size_pretty(pg_database_size('postgres'))")[0][0]

        amcheck = [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(cluster.bin / "pg_amcheck"),
            "-h",
            str(cluster.sockets),
            "-p",
            str(cluster.port),
            "--all",
            "--heapallindexed",
        ]
        fsaudit = [sys.executable, "-m", "fsaudit", "audit", "--check", "postgres", "--format", "json"]
        fsaudit += ["--set", f"postgres.dsn={cluster.dsn}"]
        jobs = args.jobs
        tools = {
            "pg_amcheck": amcheck,
            f"pg_amcheck --jobs {jobs}": amcheck + ["--jobs", str(jobs)],
            "fsaudit --jobs 1": fsaudit + ["--jobs", "1"],
            f"fsaudit --jobs {jobs}": fsaudit + ["--jobs", str(jobs)],
        }
        if jobs == 1:
            tools = {name: tools[name] for name in ("pg_amcheck", "fsaudit --jobs 1")}
        times = {name: [] for name in tools}
        check_seconds = {name: [] for name in tools}
        for command in tools.values():
            timed(command)  # warm-up
        # Alternate the tools, so that a burst of load on a shared machine hits all alike.
        for _ in range(args.runs):
            for name, command in tools.items():
                seconds, result = timed(command)
                if result.returncode != 0:
                    print(f"{name} exited {result.returncode}: {(result.stdout + result.stderr)[-2000:]}")
                elif name.startswith("fsaudit"):
                    check_seconds[name].append(json.loads(result.stdout)["checks"][0]["seconds"])
                times[name].append(seconds)
        best = {name: min(values) for name, values in times.items()}
        print(f"database: pgbench scale {args.scale} ({size}); {os.cpu_count()} cores, shared machine")
        for name, seconds in best.items():
            own = f" (the check alone: {min(check_seconds[name]):.2f} s)" if check_seconds[name] else ""
            print(f"{name + ':':24} {seconds:.2f} s{own}")
        # The process time includes starting Python and importing psycopg, a few tenths of a second;
        # the check's own time is what grows with the database.
        ours, theirs = f"fsaudit --jobs {jobs}", "pg_amcheck"
        ratio = best[ours] / best[theirs]
        own = min(check_seconds[ours]) / best[theirs] if check_seconds[ours] else float("nan")
        print(f"ratio {ours} / {theirs}: {ratio:.2f}x, the check alone {own:.2f}x (goal <= 1.3x)")
        if jobs > 1:
            print(f"same connections, one each:  {best['fsaudit --jobs 1'] / best['pg_amcheck']:.2f}x")
            print(f"same connections, {jobs} each: {best[ours] / best[f'pg_amcheck --jobs {jobs}']:.2f}x")
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
