"""Issue 13.12: Ctrl-C while a large file is being hashed must not wait until it is hashed. The
interrupted audit writes its report (what was checked, marked interrupted), exits 3, and leaves no
worker process behind."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fixtures.corrupt import kept_times
from tests.conftest import REPO, fsaudit, interruptible

GIB = 1 << 30


def _children(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _bytes_read(pids) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as handle:
                total += int(next(line for line in handle if line.startswith("rchar:")).split()[1])
        except (OSError, StopIteration):
            pass
    return total


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("jobs", ["2", "1"], ids=["worker processes", "threads"])
def test_ctrl_c_during_a_large_file_stops_at_once(tmp_path, jobs):
    tree = tmp_path / "tree"
    tree.mkdir()
    big = tree / "disk.img"
    big.write_bytes(b"x")
    baseline = tmp_path / "tree.baseline"
    assert fsaudit("baseline", "create", tree, "--output", baseline).code == 0
    # A sparse file the baseline says is this large: it must be hashed in full (over a minute at
    # SHA-256 speed), where an interrupt used to wait for the end of it.
    fs = os.statvfs(tmp_path)
    size = min(128 * GIB, fs.f_blocks * fs.f_frsize // 2)
    with kept_times(big), open(big, "r+b") as handle:
        handle.truncate(size)
    lines = gzip.decompress(baseline.read_bytes()).decode().splitlines()
    for index, line in enumerate(lines):
        record = json.loads(line)
        if record.get("p", "").endswith("/disk.img"):
            record["s"] = size
            lines[index] = json.dumps(record)
    baseline.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    report = tmp_path / "report.json"
    audit = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fsaudit",
            "audit",
            "--check",
            "baseline",
            "--set",
            f"baseline.file={baseline}",
        ]
        + ["--no-drop-cache", "--jobs", jobs, "--format", "json", "--output", str(report)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline and _bytes_read([audit.pid, *workers]) < GIB:
            workers = _children(audit.pid)
            assert audit.poll() is None, audit.communicate()
            time.sleep(0.05)
        assert _bytes_read([audit.pid, *workers]) >= GIB, "the large file was not being hashed"
        audit.send_signal(signal.SIGINT)
        started = time.monotonic()
        # Hashing the rest would take longer than this wait: ending within it means it did not wait.
        out, err = audit.communicate(timeout=30)
        print(f"stopped {time.monotonic() - started:.2f} s after Ctrl-C")
    finally:
        audit.kill()
    assert audit.returncode == 3, err
    check = json.loads(report.read_text())["checks"][0]
    assert check["name"] == "baseline" and check["status"] == "unknown"
    assert "interrupted" in check["reason"]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "worker processes were left running"
