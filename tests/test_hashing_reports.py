"""The same report at any --jobs and --io-depth, through the CLI: the reading engine changes how fast
files are read, never what the report says, nor the order in which it says it."""

from __future__ import annotations

import os

import pytest

from fixtures import debian as debfix
from fixtures.corrupt import flip_byte, replace_with_fifo, truncate
from fixtures.window import IN_WINDOW, OLD, WINDOW, set_mtime
from tests.conftest import fsaudit, require_program

SETTINGS = [("--jobs", "1", "--io-depth", "1"), ("--jobs", "2"), ("--jobs", "3", "--io-depth", "5")]


def _comparable(run, name: str) -> tuple:
    check = run.check(name)
    stats = {k: v for k, v in check["stats"].items() if k != "reading"}
    return check["status"], check["reason"], stats, check["findings"]


@pytest.fixture(scope="module")
def dpkg_root(tmp_path_factory):
    require_program("dpkg-deb", "dpkg")
    work = tmp_path_factory.mktemp("reports")
    root = debfix.make_root(work / "root")
    debs = []
    for number in range(4):
        files = {f"/usr/lib/p{number}/d{n % 7}/f{n}": os.urandom(100 + n * 31) for n in range(120)}
        files[f"/usr/share/p{number}/big"] = os.urandom(3 << 20)
        debs.append(debfix.make_deb(work / "debs", f"p{number}", files=files))
    debfix.install(root, *debs)
    flip_byte(root / "usr" / "lib" / "p1" / "d3" / "f10")
    truncate(root / "usr" / "share" / "p2" / "big", 1000)
    (root / "usr" / "lib" / "p3" / "d1" / "f8").unlink()
    replace_with_fifo(root / "usr" / "lib" / "p0" / "d2" / "f9")
    return root


def test_debian_reports_the_same_at_any_setting(dpkg_root):
    runs = [
        fsaudit("audit", "--root", dpkg_root, "--check", "debian", "--format", "json", *setting)
        for setting in SETTINGS
    ]
    assert {run.code for run in runs} == {2}
    first = _comparable(runs[0], "debian")
    assert first[2]["files_verified"] == 4 * 121 - 2
    assert {f["code"] for f in first[3]} == {"content-differs", "missing", "wrong-type"}
    for run in runs[1:]:
        assert _comparable(run, "debian") == first
    assert "worker processes" in runs[1].check("debian")["stats"]["reading"]


def test_window_reports_the_same_at_any_setting(tmp_path):
    """A tree large enough for the walk to start its worker processes."""
    root = tmp_path / "root"
    for top in range(12):
        for sub in range(12):
            directory = root / f"t{top}" / f"s{sub}"
            directory.mkdir(parents=True)
            for number in range(6):
                path = directory / f"f{number}"
                path.write_text("x")
                set_mtime(path, IN_WINDOW if (top * 7 + sub * 3 + number) % 11 == 0 else OLD)
            set_mtime(directory, IN_WINDOW if (top + sub) % 9 == 0 else OLD)
    runs = [
        fsaudit("audit", "--root", root, "--check", "window", "--window", WINDOW, "--format", "json", *s)
        for s in SETTINGS
    ]
    first = _comparable(runs[0], "window")
    assert first[2]["directories_scanned"] == 1 + 12 + 144
    assert first[2]["entries_scanned"] == 12 + 144 + 144 * 6
    assert first[2]["files_modified_in_window"] > 50
    for run in runs[1:]:
        assert _comparable(run, "window") == first
