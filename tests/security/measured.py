"""Running fsaudit as a child process and measuring what it cost: wall time and peak memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from tests.conftest import Run

GIB = 1 << 30

# The peak RSS of a process counts what it held before exec(): a child forked from a large test
# process would report the test's memory. So a small launcher starts fsaudit and reports fsaudit's
# own wait4() usage, which also covers the descendants fsaudit waited for (its worker processes).
_LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], dict(os.environ))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


@dataclass
class Cost:
    seconds: float
    max_rss: int  # bytes: the peak of fsaudit or of any process it started and waited for


def fsaudit_measured(*args, timeout: float = 300) -> tuple:
    """(Run, Cost) of `python -m fsaudit ARGS`."""
    command = [sys.executable, "-m", "fsaudit", *map(str, args)]
    with tempfile.NamedTemporaryFile("r", prefix="fsaudit-rusage-") as usage:
        start = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, usage.name, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The launcher's session holds fsaudit and its workers: end them all.
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(f"fsaudit {' '.join(map(str, args))} took longer than {timeout} s") from None
        completed = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        seconds = time.monotonic() - start
        max_rss = int(usage.read() or 0)
    return Run(completed), Cost(seconds, max_rss)
