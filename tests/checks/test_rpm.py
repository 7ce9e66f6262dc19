"""The rpm checker against real RPMs installed with `rpm --root`, compared with `rpm -Va` on the same root."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from fixtures import rpm as rpmfix
from fixtures.corrupt import flip_byte, kept_times, replace_with_fifo, truncate
from tests.conftest import Run, audit_root, copy_root, require_program

OTHER_FILES = {
    "/usr/bin/other": ("file", "other program\n" * 50, "%attr(0755, root, root)"),
    "/usr/share/other/notes.txt": ("file", "notes\n", ""),
}
DOCS_FILES = {
    "/usr/bin/docs": ("file", "docs program\n", "%attr(0755, root, root)"),
    "/usr/share/doc/docs/MANUAL": ("file", "a manual\n", "%doc"),
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    require_program("rpmbuild", "rpm")
    top = tmp_path_factory.mktemp("rpmbuild")
    return {
        "demo": rpmfix.build_rpm(top, "demo"),
        "other": rpmfix.build_rpm(top, "other", "2.5", OTHER_FILES),
        "docs": rpmfix.build_rpm(top, "docs", "0.1", DOCS_FILES),
    }


@pytest.fixture(scope="module")
def pristine(packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "root"
    rpmfix.make_root(root)
    rpmfix.install(root, [packages["demo"], packages["other"]])
    rpmfix.install(root, [packages["docs"]], "--excludedocs")
    return root


@pytest.fixture
def root(pristine, tmp_path):
    return copy_root(pristine, tmp_path)


def audit(root, *args):
    return audit_root("rpm", root, *args)


def by_path(run) -> dict:
    return run.by_path("rpm")


def db_snapshot(root: Path) -> dict:
    dbdir = root / "var/lib/rpm"
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in dbdir.iterdir()}


def damage(root: Path) -> None:
    """One of each kind of damage rpm -V reports."""
    flip_byte(root / "usr/bin/demo", 3)  # same size, same mtime: digest only
    truncate(root / "usr/lib/demo/data.bin", 100)  # size and digest
    os.unlink(root / "usr/bin/demo-tool")  # missing
    (root / "etc/demo.conf").write_text("key = 2\n")  # %config edited
    os.unlink(root / "etc/demo-optional.conf")  # %config(missingok) gone: not reported
    ghost = root / "var/lib/demo/state"  # %ghost: never installed; its content is the program's own
    ghost.write_text("runtime state\n")
    os.chmod(ghost, 0o644)
    link = root / "usr/bin/demo-link"
    with kept_times(link):
        link.unlink()
        link.symlink_to("elsewhere")
    os.chmod(root / "usr/share/demo", 0o700)  # directory mode
    os.chown(root / "usr/lib/demo/owned", 0, 0, follow_symlinks=False)  # owner and group
    notes = root / "usr/share/other/notes.txt"
    os.utime(notes, (1, 1))  # mtime only
    with kept_times(root / "usr/bin/other"):
        replace_with_fifo(root / "usr/bin/other")  # a FIFO where the program was


def test_clean_root_is_ok_and_agrees_with_rpm(root):
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("rpm")
    assert check["findings"] == []
    assert check["stats"]["packages"] == 3
    assert check["stats"]["files_verified"] == 14
    assert check["stats"]["files_skipped"] == 2  # the absent %ghost and the excluded %doc
    assert rpmfix.rpm_verify(root) == {}


def test_damage_is_found_like_rpm_va_and_classified(root):
    damage(root)
    before = db_snapshot(root)
    run = audit(root)
    assert db_snapshot(root) == before  # nothing written beside the database (rpm -V itself does)
    assert run.code == 2, run.stdout + run.stderr
    found = by_path(run)
    expected = rpmfix.rpm_verify(root)
    assert {path: f["details"]["flags"] for path, f in found.items()} == expected
    codes = {path: f["code"] for path, f in found.items()}
    assert codes == {
        "/usr/bin/demo": "content-differs",
        "/usr/lib/demo/data.bin": "content-differs",
        "/usr/bin/demo-tool": "missing",
        "/etc/demo.conf": "config-differs",
        "/usr/bin/demo-link": "link-differs",
        "/usr/share/demo": "metadata-differs",
        "/usr/lib/demo/owned": "metadata-differs",
        "/usr/share/other/notes.txt": "mtime-differs",
        "/usr/bin/other": "type-differs",
    }
    severities = {f["code"]: f["severity"] for f in found.values()}
    assert severities["missing"] == severities["content-differs"] == severities["type-differs"] == "critical"
    assert severities["config-differs"] == severities["metadata-differs"] == "warning"
    assert severities["mtime-differs"] == "info"
    demo = found["/usr/bin/demo"]
    assert demo["subject"] == "demo 1.0-1"
    assert demo["details"]["package"] == "demo"
    assert demo["details"]["version"] == "1.0-1"
    assert demo["details"]["architecture"] == "noarch"
    assert demo["details"]["flags"] == "..5......"
    assert demo["details"]["actual_digest"] != demo["details"]["expected_digest"]
    assert found["/usr/lib/demo/owned"]["details"]["expected_user"] == "demo"
    assert found["/usr/lib/demo/owned"]["details"]["actual_user"] == "root"
    assert found["/etc/demo.conf"]["details"]["attribute"] == "c"
    assert "reinstall the package demo" in demo["advice"]
    # The excluded %doc of `docs` was never installed: neither tool reports it.
    assert "/usr/share/doc/docs/MANUAL" not in found


def test_owner_names_come_from_the_image(root):
    # Renumber `demo` in the image: the file's uid 1234 no longer has that name, and rpm agrees.
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\ndemo:x:4321:4321::/:/bin/sh\n")
    run = audit(root)
    assert run.code == 1
    owned = by_path(run)["/usr/lib/demo/owned"]
    assert owned["details"]["flags"] == ".....U..."
    assert rpmfix.rpm_verify(root) == {"/usr/lib/demo/owned": ".....U..."}


def test_pending_wal_transactions_are_read_without_writing_beside_the_database(root):
    db = root / "var/lib/rpm/rpmdb.sqlite"
    # Leave a committed but uncheckpointed transaction in the log: `other` is uninstalled there.
    script = (
        "import sqlite3, os, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "blob = c.execute('SELECT blob FROM Packages').fetchall()\n"
        "c.execute(\"DELETE FROM Packages WHERE hnum = (SELECT hnum FROM Name WHERE key = 'other')\")\n"
        "c.commit(); os._exit(0)\n"
    )
    subprocess.run(["python3", "-c", script, str(db)], check=True)
    assert (root / "var/lib/rpm/rpmdb.sqlite-wal").stat().st_size > 0
    os.unlink(root / "usr/bin/other")
    before = db_snapshot(root)
    run = audit(root)
    assert run.code == 0, run.stdout
    assert run.check("rpm")["stats"]["packages"] == 2
    assert db_snapshot(root) == before


def test_immutable_open_creates_no_wal_or_shm(root):
    dbdir = root / "var/lib/rpm"
    for name in ("rpmdb.sqlite-wal", "rpmdb.sqlite-shm"):
        if (dbdir / name).exists():
            (dbdir / name).unlink()
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    assert sorted(p.name for p in dbdir.iterdir()) == [".rpm.lock", "rpmdb.sqlite"]


def test_damaged_sqlite_header_is_reported_and_the_rest_verified(root):
    db = root / "var/lib/rpm/rpmdb.sqlite"
    with closing(sqlite3.connect(db)) as connection:
        (hnum, blob) = connection.execute(
            "SELECT Packages.hnum, blob FROM Packages JOIN Name USING (hnum) WHERE key = 'demo'"
        ).fetchone()
        damaged = bytearray(blob)
        position = blob.index(b"demo-tool")
        damaged[position] ^= 0x20  # a renamed file in the immutable region: the header digest catches it
        connection.execute("UPDATE Packages SET blob = ? WHERE hnum = ?", (bytes(damaged), hnum))
        (hnum,) = connection.execute("SELECT hnum FROM Name WHERE key = 'docs'").fetchone()
        connection.execute("UPDATE Packages SET blob = substr(blob, 1, 100) WHERE hnum = ?", (hnum,))
        connection.commit()
    flip_byte(root / "usr/bin/other", 0)
    run = audit(root)
    assert run.code == 2
    check = run.check("rpm")
    assert len(run.findings("rpm", "header-damaged")) == 2
    assert run.codes("rpm") == {"header-damaged", "content-differs"}
    assert check["status"] == "critical"
    assert "not verified" in check["reason"] or "damaged" in check["reason"]
    assert check["stats"]["packages_unverified"] == 2


def test_legacy_bdb_database_verifies_like_rpm(root):
    rpmfix.write_bdb(root)
    damage(root)
    run = audit(root)
    assert run.code == 2, run.stdout + run.stderr
    assert run.check("rpm")["stats"]["database"] == "bdb /var/lib/rpm/Packages"
    assert run.check("rpm")["stats"]["packages"] == 3
    found = {path: f["details"]["flags"] for path, f in by_path(run).items()}
    assert found == rpmfix.rpm_verify(root, backend="bdb_ro")
    assert sorted(p.name for p in (root / "var/lib/rpm").iterdir()) == ["Packages"]


def test_bdb_damaged_blob_and_page_are_findings_and_the_rest_is_verified(root):
    packages_file = rpmfix.write_bdb(root, page_size=1024)
    # A damaged blob: one byte of demo's header, inside its overflow chain.
    rpmfix.corrupt_at(packages_file, b"demo-tool\0")
    # A damaged page: the middle of docs' overflow chain reads back as zeros (a lost write).
    chain = rpmfix.chain_containing(packages_file, 1024, b"MANUAL\0")
    assert len(chain) >= 2
    data = bytearray(packages_file.read_bytes())
    data[chain[1] * 1024 : chain[1] * 1024 + 1024] = bytes(1024)
    packages_file.write_bytes(bytes(data))
    flip_byte(root / "usr/bin/other", 0)
    run = audit(root)
    assert run.code == 2
    assert run.codes("rpm") == {"header-damaged", "database-damaged", "content-differs"}
    (page,) = run.findings("rpm", "database-damaged")
    assert page["details"]["format"] == "bdb"
    assert "page" in page["message"]
    (other,) = run.findings("rpm", "content-differs")
    assert other["path"] == "/usr/bin/other"
    assert run.check("rpm")["stats"]["packages"] == 1


def test_bdb_damaged_metadata_page(root):
    packages_file = rpmfix.write_bdb(root)
    data = bytearray(packages_file.read_bytes())
    data[20:24] = b"\x03\x00\x00\x00"  # an impossible page size
    packages_file.write_bytes(bytes(data))
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("rpm", "database-damaged")
    assert "page size" in finding["message"]
    assert run.check("rpm")["status"] == "critical"


def test_ndb_database_is_reported_as_unsupported(tmp_path):
    dbdir = tmp_path / "root/usr/lib/sysimage/rpm"
    dbdir.mkdir(parents=True)
    (dbdir / "Packages.db").write_bytes(b"RpmP" + bytes(4092))
    run = audit(tmp_path / "root")
    assert run.code == 3
    assert run.codes("rpm") == {"database-unsupported"}
    assert "NDB" in run.check("rpm")["reason"]


def test_fedora_layout_and_skip_without_database(root, tmp_path):
    sysimage = root / "usr/lib/sysimage"
    sysimage.mkdir(parents=True)
    os.rename(root / "var/lib/rpm", sysimage / "rpm")
    os.symlink("../../usr/lib/sysimage/rpm", root / "var/lib/rpm")
    run = audit(root)
    assert run.code == 0, run.stdout
    assert run.check("rpm")["stats"]["database"].endswith("rpmdb.sqlite")
    os.unlink(root / "usr/bin/demo")
    run = audit(root, "--set", "rpm.packages=other,docs")
    assert run.code == 0 and run.check("rpm")["stats"]["packages"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    run = audit(empty)
    assert run.check("rpm")["status"] == "skipped"
    assert "no RPM database" in run.check("rpm")["reason"]


def test_damaged_sqlite_page_is_reported_and_the_other_records_verified(root):
    db = root / "var/lib/rpm/rpmdb.sqlite"
    (page_size,) = (
        sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True).execute("PRAGMA page_size").fetchone()
    )
    data = bytearray(db.read_bytes())
    page = data.index(b"demo-tool\0") // page_size  # the b-tree leaf holding demo's header
    data[page * page_size : (page + 1) * page_size] = bytes(page_size)  # a lost write: zeros
    db.write_bytes(bytes(data))
    flip_byte(root / "usr/bin/other", 0)
    run = audit(root)
    assert run.code == 2
    (damaged,) = run.findings("rpm", "database-damaged")
    assert damaged["details"]["format"] == "sqlite" and "malformed" in damaged["message"]
    assert [f["path"] for f in run.findings("rpm", "content-differs")] == ["/usr/bin/other"]
    assert run.check("rpm")["stats"]["packages"] == 2


def test_damaged_header_is_verified_from_the_package_cache(root, packages):
    cache = root / "var/cache/dnf/fedora-0123456789abcdef/packages"
    cache.mkdir(parents=True)
    for name in ("demo", "docs"):
        (cache / packages[name].name).write_bytes(packages[name].read_bytes())
    db = root / "var/lib/rpm/rpmdb.sqlite"
    with closing(sqlite3.connect(db)) as connection:
        for name, needle in (("demo", b"demo-tool"), ("docs", b"MANUAL")):
            (hnum, blob) = connection.execute(
                "SELECT Packages.hnum, blob FROM Packages JOIN Name USING (hnum) WHERE key = ?", (name,)
            ).fetchone()
            damaged = bytearray(blob)
            damaged[blob.index(needle)] ^= 0x20
            connection.execute("UPDATE Packages SET blob = ? WHERE hnum = ?", (bytes(damaged), hnum))
        connection.commit()
    flip_byte(root / "usr/lib/demo/data.bin", 10)
    run = audit(root)
    assert run.code == 2, run.stdout
    headers = {f["details"]["package"]: f for f in run.findings("rpm", "header-damaged")}
    assert set(headers) == {"demo", "docs"}
    assert headers["demo"]["details"]["manifest"].endswith("/packages/demo-1.0-1.noarch.rpm")
    # demo's files were still verified from the cached package; docs' excluded %doc stays excluded
    # because the installed header's file states were still readable.
    assert [f["path"] for f in run.findings("rpm", "content-differs")] == ["/usr/lib/demo/data.bin"]
    assert run.codes("rpm") == {"header-damaged", "content-differs"}
    check = run.check("rpm")
    assert check["stats"]["packages"] == 3 and check["stats"]["packages_from_cache"] == 2
    assert "packages_unverified" not in check["stats"]


def test_device_numbers_are_compared_like_rpm(packages, tmp_path):
    devices = {"/dev/demo-null": ("dev", "", "%dev(c, 1, 3) %attr(0666, root, root)")}
    rpm = rpmfix.build_rpm(tmp_path / "top", "devs", "1", devices)
    root = tmp_path / "root"
    rpmfix.make_root(root)
    rpmfix.install(root, [rpm])
    node = root / "dev/demo-null"
    with kept_times(node):
        node.unlink()
        os.mknod(node, 0o20666, os.makedev(1, 5))
        os.chmod(node, 0o666)
    run = audit(root)
    assert run.code == 1, run.stdout
    (finding,) = run.findings("rpm")
    assert finding["code"] == "metadata-differs"
    assert (
        {finding["path"]: finding["details"]["flags"]}
        == rpmfix.rpm_verify(root)
        == {"/dev/demo-null": "...D....."}
    )


def test_a_database_file_whose_header_is_gone_is_damage_not_absence(root):
    db = root / "var/lib/rpm/rpmdb.sqlite"
    data = bytearray(db.read_bytes())
    data[:4096] = bytes(4096)
    db.write_bytes(bytes(data))
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("rpm", "database-damaged")
    assert (
        finding["path"] == "/var/lib/rpm/rpmdb.sqlite" and finding["details"]["expected_format"] == "sqlite"
    )


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def test_a_change_made_after_installation_is_a_warning_unless_in_the_window(root):
    installed = run_installtime(root, "other")
    changed_at = installed + 3 * 86400
    program = root / "usr/bin/other"
    program.write_text("other program, updated outside rpm\n")
    os.utime(program, (changed_at, changed_at))
    flip_byte(root / "usr/bin/demo", 3)
    run = audit(root)
    assert run.code == 2
    found = by_path(run)
    changed = found["/usr/bin/other"]
    assert (changed["code"], changed["severity"]) == ("modified-after-install", "warning")
    assert changed["details"]["modified"] == _iso(changed_at)
    assert changed["details"]["installed"] == _iso(installed)
    assert changed["details"]["flags"] == "S.5....T."
    # The lost write kept the packaged mtime: silent damage.
    assert found["/usr/bin/demo"]["code"] == "content-differs"
    day = _iso(changed_at)[:10]
    run = audit(root, "--window", f"{day}..{_iso(changed_at + 86400)[:10]}")
    changed = by_path(run)["/usr/bin/other"]
    assert (changed["code"], changed["severity"]) == ("content-differs", "critical")
    assert changed["details"]["modified_in_window"] is True


def run_installtime(root: Path, package: str) -> int:
    completed = subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", rpmfix.DBPATH, "-q", "--qf", "%{INSTALLTIME}", package],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(completed.stdout)


def test_a_file_this_user_may_not_read_is_not_damage_but_not_checked(root):
    os.chmod(root / "usr/bin/demo", 0)
    os.chmod(root / "usr/share/other", 0)
    command = [
        require_program("setpriv", "util-linux"),
        "--bounding-set=-dac_override,-dac_read_search",
        sys.executable, "-m", "fsaudit", "audit", "--root", str(root), "--check", "rpm", "--format", "json",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    run = Run(completed)
    assert run.code == 3, run.stdout + run.stderr
    # The unreadable program, the file in a directory that cannot be searched, and demo's own 0640
    # file (root without its capabilities is another user to it): none of them is damage.
    assert run.findings("rpm") == []
    check = run.check("rpm")
    assert check["stats"]["not_checked_permission"] == 3
    assert "3 files not checked: permission denied (run as root to check them)" in check["reason"]


def test_advice_under_root_names_the_image_not_the_host(root):
    flip_byte(root / "usr/bin/demo", 3)
    (finding,) = audit(root).findings("rpm", "content-differs")
    assert "inside the VM" in finding["advice"]
    assert f"fsaudit repair REPORT.json --root {root}" in finding["advice"]
