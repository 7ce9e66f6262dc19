"""The long fuzz run of every parser of untrusted bytes (the suite's tests/security/test_fuzz_parsers.py
runs each target for a few seconds with a fixed seed; this runs them for minutes with random ones).

Each target runs in its own child process under an address-space cap (`--memory-mb`), with an alarm per
input: a parser that raises what its callers do not handle, hangs, or needs more memory than the cap
fails the target, and the smallest input hypothesis finds is printed. The table gives the inputs tried,
their rate, the child's peak RSS and the outcome.

    .venv/bin/python benchmarks/fuzz.py --seconds 120            # every target, two minutes each
    .venv/bin/python benchmarks/fuzz.py --seconds 600 git-config # one target
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECONDS_PER_INPUT = 20


def child(name: str, seconds: float, memory: int) -> int:
    """Fuzz one target until `seconds` have passed; print one JSON line with the outcome."""
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.path.insert(0, str(REPO))
    from hypothesis import HealthCheck, given, settings

    from tests.security.fuzz_targets import TARGETS

    target = TARGETS[name]
    tried = [0]

    def alarm(signum, frame):
        raise TimeoutError(f"one input kept the parser busy for {SECONDS_PER_INPUT} s")

    signal.signal(signal.SIGALRM, alarm)

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(target.inputs())
    def fuzz(data: bytes) -> None:
        tried[0] += 1
        signal.alarm(SECONDS_PER_INPUT)
        try:
            target.run(data)
        finally:
            signal.alarm(0)

    start = time.monotonic()
    failure = None
    while time.monotonic() - start < seconds:
        try:
            fuzz()  # a fresh random seed each round
        except Exception as error:  # the failure hypothesis shrank: report it, stop
            failure = f"{type(error).__name__}: {error}"[:2000]
            break
    # Its own peak and that of the worker processes it started (the content checker's).
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    elapsed = time.monotonic() - start
    print(
        json.dumps(
            {"target": name, "inputs": tried[0], "seconds": elapsed, "failure": failure, "rss_kib": peak}
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per target")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address space of each target's process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    memory = options.memory_mb << 20
    if options.child:
        return child(options.child, options.seconds, memory)
    sys.path.insert(0, str(REPO))
    from tests.security.fuzz_targets import TARGETS

    names = options.targets or sorted(TARGETS)
    print(f"{'target':<20} {'inputs':>9} {'per s':>7} {'peak RSS':>9}  outcome")
    failed = 0
    for name in names:
        process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--seconds",
                str(options.seconds),
                "--memory-mb",
                str(options.memory_mb),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        stdout, stderr = process.communicate()
        result = _last_json(stdout)
        if result is None:
            failed += 1
            last = (stderr.strip().splitlines() or [""])[-1]
            print(f"{name:<20} {'-':>9} {'-':>7} {'-':>9}  died (status {process.returncode}): {last}")
            continue
        peak = result["rss_kib"] / 1024
        rate = result["inputs"] / max(result["seconds"], 1e-9)
        outcome = "clean" if result["failure"] is None else f"FAILED {result['failure']}"
        failed += result["failure"] is not None
        print(f"{name:<20} {result['inputs']:>9,} {rate:>7,.0f} {peak:>8.0f}M  {outcome}")
    return 1 if failed else 0


def _last_json(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


if __name__ == "__main__":
    sys.exit(main())
