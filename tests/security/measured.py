"""Running fsaudit as a child process and measuring what it cost: wall time and peak memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Run

GIB = 1 << 30

# The peak RSS of a process counts what it held before exec(): a child forked from a large test
# process would report the test's memory. So a small launcher starts fsaudit and reports fsaudit's
# own wait4() usage, which also covers the descendants fsaudit waited for (its worker processes).
# The launcher hands fsaudit to a detached waiter and exits at once: the waiter is reaped by init,
# so fsaudit's peak never reaches the test process's RUSAGE_CHILDREN, which other tests read.
_LAUNCHER = """
import os, sys
if os.fork():
    os._exit(0)
os.setsid()
with open(sys.argv[1] + ".group", "w") as out:
    out.write(str(os.getpid()))
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], dict(os.environ))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""


@dataclass
class Cost:
    seconds: float
    max_rss: int  # bytes: the peak of fsaudit or of any process it started and waited for


def fsaudit_measured(*args, timeout: float = 300) -> tuple:
    """(Run, Cost) of `python -m fsaudit ARGS`."""
    command = [sys.executable, "-m", "fsaudit", *map(str, args)]
    with tempfile.TemporaryDirectory(prefix="fsaudit-rusage-") as scratch:
        result = os.path.join(scratch, "usage")
        start = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, result, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        try:
            # The pipes close when fsaudit and its waiter have ended.
            stdout, stderr = process.communicate(timeout=timeout)
            while not os.path.exists(result) and time.monotonic() - start < timeout:
                time.sleep(0.01)
            code, max_rss = map(int, Path(result).read_text().split())
        except (subprocess.TimeoutExpired, OSError):
            # The waiter leads a session of its own holding fsaudit and its workers: end them all.
            try:
                os.killpg(int(Path(result + ".group").read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            process.kill()
            process.communicate()
            raise AssertionError(f"fsaudit {' '.join(map(str, args))} took longer than {timeout} s") from None
        seconds = time.monotonic() - start
    completed = subprocess.CompletedProcess(command, code, stdout, stderr)
    return Run(completed), Cost(seconds, max_rss)
