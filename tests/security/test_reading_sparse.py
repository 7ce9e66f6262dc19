"""Issue 13.8 (reading): a huge sparse file, or one larger than its filesystem, where a packaged file
was must be reported, not read for minutes. Each case: < 60 s, < 1 GiB RSS, the finding there."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fixtures import debian as debfix
from fixtures.corrupt import kept_times
from tests.conftest import REPO, Run, require_program

GIB = 1 << 30


def _measured(*args) -> tuple:
    """Run fsaudit under GNU time: (Run, wall seconds, peak RSS in KiB of fsaudit itself)."""
    time_program = require_program("time", "time")
    command = [time_program, "-f", "%M", sys.executable, "-m", "fsaudit", *map(str, args)]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    wall = time.monotonic() - started
    peak = int(completed.stderr.strip().splitlines()[-1])
    return Run(completed), wall, peak


@pytest.fixture
def root(tmp_path):
    require_program("dpkg-deb", "dpkg")
    root = debfix.make_root(tmp_path / "root")
    deb = debfix.make_deb(
        tmp_path / "debs",
        "tool",
        files={"/usr/bin/tool": b"\x7fELF" + os.urandom(20000), "/usr/bin/other": b"#!/bin/sh\n"},
    )
    debfix.install(root, deb)
    return root


def _sparse(path, size: int) -> None:
    with kept_times(path), open(path, "r+b") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("what", ["10 GiB of holes", "larger than its filesystem"])
def test_a_sparse_file_where_a_packaged_file_was_is_reported_not_read(root, what):
    fs = os.statvfs(root)
    size = 10 * GIB if what == "10 GiB of holes" else fs.f_blocks * fs.f_frsize + 64 * GIB
    _sparse(root / "usr" / "bin" / "tool", size)
    # The classifier reads a damaged file to describe it: that is the debian checker's own reading.
    run, wall, peak = _measured(
        "audit", "--root", root, "--check", "debian", "--set", "debian.classify=false", "--format", "json"
    )
    assert run.code == 2, run.stderr
    finding = next(f for f in run.findings("debian", "content-differs") if f["path"] == "/usr/bin/tool")
    assert finding["severity"] == "critical" and finding["details"]["size"] == size
    assert run.check("debian")["stats"]["files_verified"] == 2
    assert wall < 60, f"{wall:.1f} s"
    assert peak < GIB // 1024, f"peak RSS {peak} KiB"
