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


@pytest.mark.parametrize(
    "what, code", [("10 GiB of holes", "sparse"), ("larger than its filesystem", "absurd-size")]
)
def test_a_sparse_file_where_a_packaged_file_was_is_reported_not_read(root, what, code):
    fs = os.statvfs(root)
    size = 10 * GIB if what == "10 GiB of holes" else fs.f_blocks * fs.f_frsize + 64 * GIB
    _sparse(root / "usr" / "bin" / "tool", size)
    # With the classifier on: describing a damaged file must not read it either.
    run, wall, peak = _measured("audit", "--root", root, "--check", "debian", "--format", "json")
    assert run.code == 2, run.stderr
    assert not run.findings("debian", "content-differs")
    finding = next(f for f in run.findings("debian", code) if f["path"] == "/usr/bin/tool")
    assert finding["severity"] == "critical" and finding["details"]["size"] == size
    assert finding["details"]["holes"] >= size - (1 << 20)
    assert "reinstall" in finding["advice"]
    stats = run.check("debian")["stats"]
    assert stats["files_verified"] == 2
    assert stats["bytes_hashed"] < 1 << 20, stats
    assert wall < 60, f"{wall:.1f} s"
    assert peak < GIB // 1024, f"peak RSS {peak} KiB"


class _Zeros:
    """A file that never ends: what reading a huge file would cost, counted."""

    def __init__(self):
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size < 0 else size
        self.read_bytes += size
        return bytes(size)


def test_describing_a_huge_damaged_file_reads_a_bounded_part_of_it():
    from fsaudit_checks.debian import classify

    endless = _Zeros()
    result = classify.evidence(endless, 10 * GIB)
    assert endless.read_bytes == classify.EVIDENCE_LIMIT
    assert result["evidence_bytes"] == classify.EVIDENCE_LIMIT
    assert result["zero_blocks"] == classify.EVIDENCE_LIMIT // classify.BLOCK


def test_comparing_a_huge_file_with_the_packaged_one_reads_no_further_than_the_packaged_one():
    import io

    from fsaudit_checks.debian import classify

    endless = _Zeros()
    packaged = io.BytesIO(bytes(5000))
    result = classify.compare(endless, packaged, 10 * GIB, 5000)
    assert endless.read_bytes <= 5000
    assert result["classification"] == "random"
    assert result["bytes_beyond_packaged"] == 10 * GIB - 5000
    assert result["first_difference"] == 5000


def test_a_sparse_file_in_a_gentoo_root_is_a_finding_of_its_own(tmp_path):
    from fixtures import portage as gentoo

    root = gentoo.make_root(tmp_path / "root")
    gentoo.install(root, "app-misc", "demo-1.0", {"/usr/bin/demo": "#!/bin/sh\necho demo\n" * 40})
    _sparse(root / "usr" / "bin" / "demo", 10 * GIB)
    run, wall, _ = _measured("audit", "--root", root, "--check", "portage", "--format", "json")
    assert run.code == 2, run.stderr
    finding = next(f for f in run.findings("portage") if f["path"] == "/usr/bin/demo")
    assert finding["code"] == "sparse" and finding["severity"] == "critical"
    assert finding["details"]["size"] == 10 * GIB
    assert "demo" in finding["advice"]
    assert wall < 60, f"{wall:.1f} s"


def test_a_sparse_file_where_git_tracked_a_file_is_a_finding_of_its_own(tmp_path):
    from fixtures.apps import make_repo

    require_program("git", "git")
    tree = make_repo(tmp_path / "srv" / "site", {"app/main.py": b"print('hello')\n" * 100})
    _sparse(tree / "app" / "main.py", 10 * GIB)
    run, wall, _ = _measured(
        "audit", "--check", "git", "--set", f"git.paths={tree.parent}", "--format", "json"
    )
    assert run.code == 2, run.stderr
    (finding,) = [f for f in run.findings("git") if f["path"].endswith("/app/main.py")]
    assert finding["code"] == "sparse", finding
    assert wall < 60, f"{wall:.1f} s"


def test_a_baseline_records_a_sparse_vm_image_holes_and_all(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "disk.img", "wb") as handle:
        handle.write(b"boot sector")
        handle.truncate(GIB)
    baseline = tmp_path / "data.baseline"
    run, _, _ = _measured("baseline", "create", data, "--output", baseline)
    assert run.code == 0, run.stdout + run.stderr
    run, _, _ = _measured(
        "audit", "--check", "baseline", "--set", f"baseline.file={baseline}", "--format", "json"
    )
    assert run.code == 0, run.stdout
    assert run.check("baseline")["stats"]["files_verified"] == 1
