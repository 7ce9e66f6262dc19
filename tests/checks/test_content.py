"""`content`: each format, sound and damaged; unknown formats counted, not guessed."""

import os
import time
from pathlib import Path

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


# -- bytecode against its source (issue 15, item 9) --------------------------------------------------

MODULE = b"def price(amount):\n    return amount * 100\n\n\nRATE = 'EUR'\n"


@pytest.fixture
def package(tmp_path):
    import py_compile

    root = tmp_path / "app"
    (root / "shop").mkdir(parents=True)
    source = root / "shop" / "prices.py"
    source.write_bytes(MODULE)
    os.utime(source, (1_600_000_000, 1_600_000_000))
    py_compile.compile(str(source), doraise=True)
    py_compile.compile(str(source), doraise=True, optimize=1)
    legacy = root / "legacy.py"
    legacy.write_bytes(MODULE)
    py_compile.compile(str(legacy), cfile=str(root / "legacy.pyc"), doraise=True)
    return root


def _listing(root):
    return sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_bytecode_that_matches_its_source_is_ok(package):
    before = _listing(package)
    run = audit("--set", f"content.paths={package}")
    assert run.code == 0, run.stdout
    stats = run.check("content")["stats"]
    assert stats["format_pyc"] == 3
    assert stats["bytecode_compared_with_source"] == 3
    assert _listing(package) == before  # nothing compiled, nothing written


def test_a_source_changed_silently_is_found_through_its_bytecode(package):
    from fixtures.corrupt import kept_times

    source = package / "shop" / "prices.py"
    with kept_times(source):
        source.write_bytes(MODULE.replace(b"* 100", b"* 900"))  # same size, same mtime
    run = audit("--set", f"content.paths={package}")
    findings = run.findings("content")
    assert {f["code"] for f in findings} == {"bytecode-mismatch"}
    assert {f["path"] for f in findings} == {str(source)}
    assert len(findings) == 2  # from the plain and the optimised bytecode
    assert all(f["severity"] == "critical" for f in findings)
    assert run.code == 2


def test_an_ordinary_edit_is_not_damage(package):
    source = package / "shop" / "prices.py"
    source.write_bytes(MODULE.replace(b"* 100", b"* 900") + b"# edited\n")
    run = audit("--set", f"content.paths={package}")
    assert run.code == 0, run.stdout


def test_a_source_that_no_longer_compiles_is_found(package):
    from fixtures.corrupt import kept_times

    legacy = package / "legacy.py"
    with kept_times(legacy):
        legacy.write_bytes(MODULE.replace(b"return", b"retu\0n"))
    run = audit("--set", f"content.paths={package}")
    by_code = {f["code"]: f for f in run.findings("content")}
    assert by_code["bytecode-mismatch"]["path"] == str(legacy)
    assert run.code == 2


def test_hash_based_bytecode_is_compared_when_the_hash_matches(tmp_path):
    import py_compile

    source = tmp_path / "mod.py"
    source.write_bytes(MODULE)
    cfile = py_compile.compile(
        str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    run = audit("--set", f"content.paths={tmp_path}")
    assert run.code == 0, run.stdout
    assert run.check("content")["stats"]["bytecode_compared_with_source"] == 1
    # Damage to the bytecode that still loads: the source's hash matches, the code does not.
    data = bytearray(Path(cfile).read_bytes())
    data[data.index(b"EUR")] = ord("X")
    Path(cfile).write_bytes(bytes(data))
    run = audit("--set", f"content.paths={tmp_path}")
    assert run.codes("content") == {"bytecode-mismatch"}


def test_permission_denied_is_not_damage(tmp_path):
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="fsaudit-content-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        for name, data in sample_files().items():
            (base / name).write_bytes(data)
            os.chmod(base / name, 0o644)
        os.chmod(base / "text.gz", 0o600)  # root's: nobody may not read it
        flip_byte(base / "image.png", 40)
        run = fsaudit(
            "audit", "--check", "content", "--set", f"content.paths={base}", "--format", "json", user="nobody"
        )
        assert {f["path"].rsplit("/", 1)[1]: f["code"] for f in run.findings("content")} == {
            "image.png": "checksum-mismatch"
        }
        check = run.check("content")
        assert check["stats"]["not_checked_permission"] == 1
        assert "1 files not checked: permission denied" in check["reason"]
        assert run.code == 2  # critical wins over unknown
    finally:
        shutil.rmtree(base, ignore_errors=True)
