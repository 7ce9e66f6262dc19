"""Side by side on the same pgbench database: `pg_amcheck --all --heapallindexed` and
`fsaudit audit --check postgres`. Prints both wall times and the ratio (goal: at most 1.3x).

Run as root from the repository: `.venv/bin/python benchmarks/postgres.py --scale 10`.
Both run warm (the database was just written and read once by each tool before timing) and on one
connection at a time (`pg_amcheck` defaults to one job; fsaudit gets `--jobs 1`).
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
        fsaudit = [
            sys.executable,
            "-m",
            "fsaudit",
            "audit",
            "--check",
            "postgres",
            "--format",
            "json",
            "--jobs",
            "1",
            "--set",
            f"postgres.dsn={cluster.dsn}",
        ]
        env_note = f"{os.cpu_count()} cores, shared machine"
        tools = (("pg_amcheck", amcheck), ("fsaudit", fsaudit))
        times = {name: [] for name, _ in tools}
        check_seconds = []
        for _, command in tools:
            timed(command)  # warm-up
        # Alternate the tools, so that a burst of load on a shared machine hits both alike.
        for _ in range(args.runs):
            for name, command in tools:
                seconds, result = timed(command)
                if result.returncode != 0:
                    print(f"{name} exited {result.returncode}: {(result.stdout + result.stderr)[-2000:]}")
                elif name == "fsaudit":
                    check_seconds.append(json.loads(result.stdout)["checks"][0]["seconds"])
                times[name].append(seconds)
        best = {name: min(values) for name, values in times.items()}
        ratio = best["fsaudit"] / best["pg_amcheck"]
        print(f"database: pgbench scale {args.scale} ({size}); {env_note}")
        print(f"pg_amcheck --all --heapallindexed: {best['pg_amcheck']:.2f} s")
        print(f"fsaudit audit --check postgres:    {best['fsaudit']:.2f} s")
        print(f"ratio fsaudit / pg_amcheck:        {ratio:.2f}x (goal <= 1.3x)")
        if check_seconds:
            # The process time includes starting Python and importing psycopg, about a second on a
            # busy machine; the check's own time is what grows with the database.
            own = min(check_seconds)
            print(f"fsaudit's check alone (report):    {own:.2f} s, {own / best['pg_amcheck']:.2f}x")
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
