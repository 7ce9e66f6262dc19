"""Running fsaudit as a child process and measuring what it cost: wall time and peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from tests.conftest import Run

GIB = 1 << 30


@dataclass
class Cost:
    seconds: float
    max_rss: int  # bytes: the peak of fsaudit or of any process it started and waited for


def fsaudit_measured(*args, timeout: float = 300) -> tuple:
    """(Run, Cost) of `python -m fsaudit ARGS`. The peak RSS comes from wait4() of this very child:
    on Linux it is the largest of the child's own and that of the descendants it reaped (its worker
    processes, git, ...), and no other test's processes."""
    command = [sys.executable, "-m", "fsaudit", *map(str, args)]
    start = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"}
    )
    output = {}
    readers = [
        threading.Thread(target=lambda name, pipe: output.__setitem__(name, pipe.read()), args=(name, pipe))
        for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for reader in readers:
        reader.start()
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > timeout:
            process.kill()
            os.wait4(process.pid, 0)
            raise AssertionError(f"fsaudit {' '.join(map(str, args))} took longer than {timeout} s")
        time.sleep(0.05)
    seconds = time.monotonic() - start
    for reader in readers:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    completed = subprocess.CompletedProcess(
        command,
        process.returncode,
        output["stdout"].decode("utf-8", "replace"),
        output["stderr"].decode("utf-8", "replace"),
    )
    return Run(completed), Cost(seconds, usage.ru_maxrss * 1024)
