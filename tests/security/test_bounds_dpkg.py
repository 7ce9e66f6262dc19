"""The dpkg database parsers over files a hostile tenant (or a damaged disk) made huge: under 60 s
and 1 GiB, and the cut is a finding (issue 13, item 8).

The files are written block by block and the reports (200,000 findings) are searched on disk, not
parsed here: this test process stays small, since a child starts with its parent's memory and other
tests read the peak of this process's children."""

from __future__ import annotations

import pytest

from fixtures.debian import install, make_deb, make_root
from fixtures.measured import GIB
from tests.conftest import fsaudit_measured, require_program


@pytest.fixture
def root(tmp_path):
    require_program("dpkg-deb", "dpkg-dev")
    root = make_root(tmp_path / "root")
    install(root, make_deb(tmp_path, "demo", files={"/usr/share/demo/a.txt": b"a\n"}))
    return root


def audit(root) -> tuple:
    """(exit code, the JSON report as bytes on disk) of an audit of `root`, within the bounds."""
    report = root.parent / "report.json"
    run, cost = fsaudit_measured(
        "audit",
        "--root",
        root,
        "--check",
        "debian",
        "--no-drop-cache",
        "--format",
        "json",
        "--output",
        report,
    )
    assert cost.seconds < 60, cost
    assert cost.max_rss < GIB, cost
    return run.code, report


def report_says(report, text: str) -> bool:
    """Whether the report holds `text`, read in blocks (a finding's message is plain ASCII here)."""
    needle = text.encode()
    tail = b""
    with open(report, "rb") as handle:
        while True:
            block = handle.read(1 << 20)
            if not block:
                return False
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]


def _write_five_million(path, line: bytes) -> None:
    """5,000,000 distinct lines from a template with `DIR` and `N` in it, written block by block."""
    block = b"".join(line.replace(b"N", b"%d" % n) for n in range(1000))
    with open(path, "wb") as out:
        for n in range(5000):
            out.write(block.replace(b"DIR", b"d%d" % n))


def _write_repeated(path, piece: bytes, times: int, mode: str = "wb") -> None:
    chunk = piece * ((1 << 20) // len(piece))
    with open(path, mode) as out:
        for _ in range(times * len(piece) // len(chunk)):
            out.write(chunk)


def test_an_md5sums_of_100_mib_of_tiny_lines(root):
    _write_repeated(root / "var/lib/dpkg/info/demo.md5sums", b"a\n", 50 << 20)
    code, report = audit(root)
    assert report_says(report, "malformed lines (line 1), 52428800 times")
    assert code == 2


def test_a_file_list_of_5_million_paths_is_cut_and_said_so(root):
    _write_five_million(root / "var/lib/dpkg/info/demo.list", b"/usr/share/demo/DIR/fN\n")
    code, report = audit(root)
    assert report_says(report, "demo.list: more than 200,000 paths")
    assert code == 2


def test_an_md5sums_of_5_million_distinct_files_is_cut_and_said_so(root):
    _write_five_million(
        root / "var/lib/dpkg/info/demo.md5sums", b"0123456789abcdef0123456789abcdef  usr/share/demo/DIR/fN\n"
    )
    code, report = audit(root)
    assert report_says(report, "demo.md5sums: more than 200,000 paths")
    assert code == 2


def test_a_status_file_of_blank_lines_and_garbage(root):
    status = root / "var/lib/dpkg/status"
    _write_repeated(status, b"\n", 64 << 20, mode="ab")
    _write_repeated(status, b"garbage\n", 8 << 20, mode="ab")
    code, report = audit(root)
    assert report_says(report, "longer than any package") or report_says(
        report, "more than 1,000 damaged lines"
    )
    assert report_says(report, '"packages": 1') or report_says(report, '"packages":1')
    assert code == 2
