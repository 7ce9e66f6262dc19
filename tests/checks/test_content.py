"""`content`: each format, sound and damaged; unknown formats counted, not guessed."""

import os
import time

import pytest

from fixtures.apps import sample_files, sqlite_file
from fixtures.corrupt import flip_byte, truncate, zero_block
from tests.conftest import fsaudit


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    for name, data in sample_files().items():
        (root / name).write_bytes(data)
    sqlite_file(root / "shop.sqlite")
    (root / "mystery.bin").write_bytes(os.urandom(3000))
    return root


def audit(*args):
    return fsaudit("audit", "--check", "content", *args, "--format", "json")


def test_sound_files_are_ok_and_unknown_ones_counted(files):
    run = audit("--set", f"content.paths={files}")
    assert run.code == 0, run.stdout
    stats = run.check("content")["stats"]
    assert stats["files_checked"] == 11
    assert stats["files_unknown_format"] == 1


@pytest.mark.parametrize(
    "name, damage, code",
    [
        ("text.gz", lambda p: flip_byte(p, -6), "checksum-mismatch"),  # the stored CRC-32
        ("text.gz", lambda p: truncate(p, os.path.getsize(p) // 2), "structure-damaged"),
        ("archive.zip", lambda p: flip_byte(p, 60), "checksum-mismatch"),
        ("image.png", lambda p: flip_byte(p, 40), "checksum-mismatch"),
        ("bundle.tar", lambda p: flip_byte(p, 512 * 52 + 100), "structure-damaged"),  # 2nd header
        ("program", lambda p: truncate(p, os.path.getsize(p) // 2), "structure-damaged"),
        ("notes.txt", lambda p: zero_block(p, 8192, 4096), "zero-blocks"),
        ("data.json", lambda p: flip_byte(p, 0), "parse-error"),
        ("app.py", lambda p: flip_byte(p, 3), "parse-error"),
        ("shop.sqlite", lambda p: zero_block(p, 4096 * 2, 4096), "structure-damaged"),
    ],
)
def test_damage_is_found_by_format(files, name, damage, code):
    damage(files / name)
    run = audit("--set", f"content.paths={files}")
    assert run.code in (1, 2)
    found = {f["path"].rsplit("/", 1)[1]: f["code"] for f in run.findings("content")}
    assert found == {name: code}


def test_sqlite_is_checked_on_a_private_copy(files):
    before = sorted(os.listdir(files))
    audit("--set", f"content.paths={files}")
    assert sorted(os.listdir(files)) == before  # no -wal, -shm or journal beside the original


def test_window_selects_the_files_at_risk(files, tmp_path):
    old = time.mktime((2014, 6, 1, 12, 0, 0, 0, 0, -1))
    for path in files.iterdir():
        os.utime(path, (old, old))
    flip_byte(files / "image.png", 40)
    os.utime(files / "image.png", (old, old))
    zero_block(files / "notes.txt", 0, 4096)  # a damaged file changed now, outside the window
    run = fsaudit(
        "audit",
        "--root",
        tmp_path,
        "--check",
        "content",
        "--window",
        "2014-06-01..2014-06-02",
        "--no-drop-cache",
        "--format",
        "json",
    )
    # Under --root the default places are searched: /files is not one of them; give it explicitly.
    assert run.check("content")["stats"].get("files_checked", 0) == 0
