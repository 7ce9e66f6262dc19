"""The dpkg database parsers over files a hostile tenant (or a damaged disk) made huge: under 60 s
and 1 GiB, and the cut is a finding (issue 13, item 8)."""

from __future__ import annotations

import json

import pytest

from fixtures.debian import install, make_deb, make_root
from tests.conftest import require_program
from tests.security.measured import GIB, fsaudit_measured


@pytest.fixture
def root(tmp_path):
    require_program("dpkg-deb", "dpkg-dev")
    root = make_root(tmp_path / "root")
    install(root, make_deb(tmp_path, "demo", files={"/usr/share/demo/a.txt": b"a\n"}))
    return root


def audit(root):
    run, cost = fsaudit_measured(
        "audit", "--root", root, "--check", "debian", "--no-drop-cache", "--format", "json"
    )
    assert cost.seconds < 60, cost
    assert cost.max_rss < GIB, cost
    return run


def damage_messages(run) -> list:
    # Read without the schema validation of Run.report: 200,000 findings take jsonschema a minute.
    check = next(c for c in json.loads(run.stdout)["checks"] if c["name"] == "debian")
    return [f["message"] for f in check["findings"] if f["code"] == "database-damaged"]


def test_an_md5sums_of_100_mib_of_tiny_lines(root):
    (root / "var/lib/dpkg/info/demo.md5sums").write_bytes(b"a\n" * (50 << 20))
    run = audit(root)
    assert any(
        "malformed lines" in m and "52,428,800" in m.replace("52428800", "52,428,800")
        for m in damage_messages(run)
    )
    assert run.code == 2


def _five_million(line: bytes) -> bytes:
    """5,000,000 distinct lines from a template with `DIR` and `N` in it, built in C-speed steps."""
    block = b"".join(line.replace(b"N", b"%d" % n) for n in range(1000))
    return b"".join(block.replace(b"DIR", b"d%d" % n) for n in range(5000))


def test_a_file_list_of_5_million_paths_is_cut_and_said_so(root):
    (root / "var/lib/dpkg/info/demo.list").write_bytes(_five_million(b"/usr/share/demo/DIR/fN\n"))
    run = audit(root)
    assert any("more than 200,000 paths" in m for m in damage_messages(run))
    assert run.code == 2


def test_an_md5sums_of_5_million_distinct_files_is_cut_and_said_so(root):
    (root / "var/lib/dpkg/info/demo.md5sums").write_bytes(
        _five_million(b"0123456789abcdef0123456789abcdef  usr/share/demo/DIR/fN\n")
    )
    run = audit(root)
    assert any("more than 200,000 paths" in m for m in damage_messages(run))
    assert run.code == 2


def test_a_status_file_of_blank_lines_and_garbage(root):
    status = root / "var/lib/dpkg/status"
    original = status.read_bytes()
    status.write_bytes(original + b"\n" * (64 << 20) + b"garbage\n" * (8 << 20))
    run = audit(root)
    messages = damage_messages(run)
    assert any("more than 1,000 damaged lines" in m for m in messages) or any(
        "longer than any package" in m for m in messages
    ), messages
    assert json.loads(run.stdout)["checks"][0]["stats"]["packages"] == 1
    assert run.code == 2
