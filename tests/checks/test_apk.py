"""The apk checker against Alpine roots whose installed database is written in the format apk-tools
writes, with real files extracted beside it (apk-tools has no Debian package)."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from fixtures import apk as alpine
from fixtures.corrupt import flip_byte, kept_times, replace_with_fifo, truncate
from fsaudit.target import Target
from fsaudit_checks.apk import cache, installed
from fsaudit_checks.apk.protected import ProtectedPaths, read_protected_paths
from fsaudit_checks.manifest.entries import Package
from tests.conftest import audit_root, copy_root, fsaudit, world_readable_directory

HOSTILE = os.fsdecode(b"/usr/share/demo/caf\xe9 \x1b[31mred")
DEMO = {
    "/usr/bin/demo": ("#!/bin/sh\necho demo\n" * 40, 0o755),
    "/usr/bin/demo-link": ("link", "demo"),
    "/usr/lib/libdemo.so.1": b"\x7fELF" + bytes(5000),
    "/etc/demo.conf": "key = 1\n",
    "/etc/init.d/demo": ("#!/sbin/openrc-run\n", 0o755),
    "/etc/ssl/certs/ca-cert-demo.pem": "certificate\n",
    "/usr/share/demo/notes.txt": "notes\n" * 100,
    "/usr/share/demo/secret": ("private\n", 0o600),
    "/var/empty": ("dir",),
    HOSTILE: "hostile name\n",
}
BUSYBOX = {"/bin/busybox": ("busybox\n" * 100, 0o755), "/bin/sh": ("link", "/bin/busybox")}


@pytest.fixture(scope="module")
def pristine():
    with world_readable_directory("fsaudit-apk-") as base:
        root = alpine.make_root(base / "root")
        (root / "etc/apk/protected_paths.d/ca-certificates.list").write_text("-etc/ssl/certs/ca-cert-*.pem\n")
        alpine.install(root, "busybox", "1.36.1-r15", BUSYBOX)
        alpine.install(root, "demo", "1.2-r0", DEMO)
        yield root


@pytest.fixture
def root(pristine, tmp_path):
    return copy_root(pristine, tmp_path)


def audit(root, *args):
    return audit_root("apk", root, *args)


def by_path(run) -> dict:
    return run.by_path("apk")


def test_clean_root_is_ok(root):
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("apk")
    assert check["findings"] == []
    stats = check["stats"]
    assert stats["packages"] == stats["packages_verified"] == 2
    # The init script (@etc/init.d protects only symlinks) and the certificate (-) are ordinary files.
    assert stats["files_verified"] == 8
    assert stats["conffiles_verified"] == 1
    assert stats["symlinks_verified"] == 2


def test_protected_paths_follow_apk_rules():
    rules = ProtectedPaths()
    for line in (b"+etc", b"@etc/init.d", b"!etc/apk", b"-etc/ssl/certs/ca-cert-*.pem", b"# comment"):
        rules.add(line)
    assert rules.is_config(b"/etc/demo.conf")
    assert rules.is_config(b"/etc/apk/world")
    assert not rules.is_config(b"/etc/init.d/demo")
    assert not rules.is_config(b"/etc/ssl/certs/ca-cert-demo.pem")
    assert rules.is_config(b"/etc/ssl/openssl.cnf")
    assert not rules.is_config(b"/usr/bin/demo")


def test_damage_is_found_and_classified(root):
    flip_byte(root / "usr/bin/demo", 7)  # same size, same mtime
    truncate(root / "usr/share/demo/notes.txt", 10)
    os.unlink(root / "usr/lib/libdemo.so.1")
    with kept_times(root / "bin/busybox"):
        replace_with_fifo(root / "bin/busybox")
    link = root / "usr/bin/demo-link"
    link.unlink()
    link.symlink_to("/etc/shadow")
    os.chmod(root / "etc/init.d/demo", 0o777)
    with kept_times(root / "etc/demo.conf"):
        (root / "etc/demo.conf").write_text("key = 2\n")
    run = audit(root)
    assert run.code == 2, run.stdout + run.stderr
    codes = {path: f["code"] for path, f in by_path(run).items()}
    assert codes == {
        "/usr/bin/demo": "content-differs",
        "/usr/share/demo/notes.txt": "content-differs",
        "/usr/lib/libdemo.so.1": "missing",
        "/bin/busybox": "wrong-type",
        "/usr/bin/demo-link": "link-differs",
        "/etc/init.d/demo": "metadata-differs",
        "/etc/demo.conf": "conffile-changed",
    }
    demo = by_path(run)["/usr/bin/demo"]
    assert demo["details"]["package"] == "demo" and demo["details"]["version"] == "1.2-r0"
    expected = hashlib.sha1(DEMO["/usr/bin/demo"][0].encode()).hexdigest()
    assert demo["details"]["expected_sha1"] == expected
    assert "apk fix demo" in demo["advice"] and "inside the VM" in demo["advice"]
    assert by_path(run)["/etc/init.d/demo"]["details"]["mode"] == "0777"


def test_a_change_after_the_build_is_a_warning_unless_it_is_in_the_window(root):
    (root / "usr/share/demo/notes.txt").write_text("edited by hand\n")
    run = audit(root)
    assert run.code == 1, run.stdout
    assert by_path(run)["/usr/share/demo/notes.txt"]["code"] == "modified-after-install"
    run = audit(root, "--window", "2000-01-01..2100-01-01")
    assert run.code == 2
    assert by_path(run)["/usr/share/demo/notes.txt"]["code"] == "content-differs"


def test_a_damaged_database_is_reported_and_the_rest_is_verified(root):
    database = root / "lib/apk/db/installed"
    text = database.read_bytes()
    text = text.replace(b"Z:Q1", b"Z:Q9", 1)  # busybox's first digest
    text = text.replace(b"R:notes.txt\n", b"R:notes.txt\nq\x00\xff broken\n")
    database.write_bytes(text)
    flip_byte(root / "usr/bin/demo", 7)
    run = audit(root)
    assert run.code == 2
    damaged = run.findings("apk", "database-damaged")
    assert len(damaged) == 2 and all(f["path"] == "/lib/apk/db/installed" for f in damaged)
    assert all(f["details"]["line"] for f in damaged)
    assert by_path(run)["/usr/bin/demo"]["code"] == "content-differs"
    # busybox's program lost its digest: its existence was checked, and the check says so.
    check = run.check("apk")
    assert check["stats"]["files_unverified"] == 1
    assert check["status"] == "critical" and "no checksum" in check["reason"]


def test_hostile_names(root):
    flip_byte(root / HOSTILE.lstrip("/"), 0)
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("apk")
    assert base64.b64decode(finding["details"]["path_b64"]) == os.fsencode(HOSTILE)


def test_files_that_cannot_be_read_without_root_are_not_damage(pristine):
    run = fsaudit("audit", "--root", pristine, "--check", "apk", "--format", "json", user="nobody")
    assert run.code == 3, run.stdout + run.stderr
    check = run.check("apk")
    assert check["findings"] == []
    assert check["stats"]["not_checked_permission"] == 1


def test_the_cached_package_gives_the_packaged_bytes(root):
    content = DEMO["/usr/lib/libdemo.so.1"]
    alpine.cache_apk(root, "demo", "1.2-r0", {"/usr/lib/libdemo.so.1": content})
    target = Target(root)
    packages = [p for p in installed.read_packages(target, read_protected_paths(target)) if p.name == "demo"]
    found = cache.find(target, packages[0])
    assert found is not None and found.startswith(b"/etc/apk/cache/demo-1.2-r0.")
    assert cache.read_file(target, found, packages[0], b"/usr/lib/libdemo.so.1") == content
    with pytest.raises(cache.CacheError):
        cache.read_file(target, found, Package("demo", "1.3-r0"), b"/usr/lib/libdemo.so.1")
    os.unlink(root / "usr/lib/libdemo.so.1")
    assert by_path(audit(root))["/usr/lib/libdemo.so.1"]["details"]["cached_package"] == os.fsdecode(found)


def test_digest_forms_of_apk():
    data = b"content"
    sha1 = hashlib.sha1(data).digest()
    sha256 = hashlib.sha256(data).digest()
    assert installed.parse_digest(b"Q1" + base64.b64encode(sha1)) == ("sha1", sha1)
    assert installed.parse_digest(b"Q1" + base64.b64encode(sha256)) == ("sha256", sha256)
    assert installed.parse_digest(b"Q2" + base64.b64encode(sha256)) == ("sha256", sha256)
    assert installed.parse_digest(b"X1" + sha1.hex().encode()) == ("sha1", sha1)
    for bad in (b"Q1", b"Q3abc", b"Q1!!!!", b"X1zz", b"Q1" + base64.b64encode(b"short")):
        with pytest.raises(installed.DigestError):
            installed.parse_digest(bad)
