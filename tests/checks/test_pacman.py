"""The pacman checker against real Arch packages installed with Debian's `pacman -U --root`, compared
with `pacman -Qkk` on the same root."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from fixtures import pacman as pacfix
from fixtures.corrupt import flip_byte, kept_times, replace_with_fifo, truncate
from fsaudit.target import Target
from fsaudit_checks.manifest.entries import Package
from fsaudit_checks.pacman import cache
from fsaudit_checks.pacman.conf import read_settings
from tests.conftest import audit_root, copy_root, fsaudit, require_program, world_readable_directory

# Not UTF-8, a space and a terminal escape (a newline would break pacman's own `files` list).
HOSTILE = "/usr/share/demo/caf\udce9 \x1b[31mred\r.txt"
DEMO = {
    "/usr/bin/demo": ("#!/bin/sh\necho demo\n" * 40, 0o755),
    "/usr/bin/demo-link": ("link", "demo"),
    "/etc/demo.conf": "key = 1\n",
    "/usr/share/demo/data.bin": bytes(range(256)) * 64,
    "/usr/share/demo/notes.txt": "notes\n" * 100,
    "/usr/share/demo/empty": ("dir",),
    "/usr/share/demo/secret.key": ("private\n", 0o600),
    HOSTILE: "hostile name\n",
}
OTHER = {
    "/usr/bin/other": ("other program\n" * 50, 0o755),
    "/usr/lib/other/lib.so": b"\x7fELF" + bytes(4000),
}
SKIPPED = {"/usr/share/skipped/readme": "not extracted\n"}
# pacman -Qkk matches NoExtract patterns against the mtree's directory names, which lack the trailing
# slash its own file list has: the directory a `dir/*` pattern kept from being created is "missing".
PACMAN_NOEXTRACT_QUIRK = {("skipped", "/usr/share/skipped")}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    require_program("pacman", "pacman-package-manager")
    require_program("bsdtar", "libarchive-tools")
    work = tmp_path_factory.mktemp("pacman-build")
    return {
        "demo": pacfix.build_package(work, "demo", "1.0-1", DEMO, backup=["/etc/demo.conf"]),
        "other": pacfix.build_package(work, "other", "2:2.5-3", OTHER, arch="any"),
        "skipped": pacfix.build_package(work, "skipped", "0.1-1", SKIPPED),
    }


@pytest.fixture(scope="module")
def pristine(packages, tmp_path_factory):
    with world_readable_directory("fsaudit-pacman-") as base:
        root = pacfix.make_root(base / "root", conf_extra="NoExtract = usr/share/skipped/*\n")
        pacfix.install(root, [packages["demo"], packages["other"], packages["skipped"]])
        yield root


@pytest.fixture
def root(pristine, tmp_path):
    return copy_root(pristine, tmp_path)


def audit(root, *args):
    return audit_root("pacman", root, *args)


def by_path(run) -> dict:
    return run.by_path("pacman")


def test_clean_root_is_ok_and_agrees_with_pacman(root):
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("pacman")
    assert check["findings"] == []
    stats = check["stats"]
    assert stats["packages"] == stats["packages_verified"] == 3
    assert stats["files_verified"] == 7  # the backup file is a conffile, the NoExtract file excluded
    assert stats["conffiles_verified"] == 1
    assert stats["symlinks_verified"] == 1
    assert stats["excluded"] == 2  # the NoExtract file and its directory
    assert pacfix.check(root) == PACMAN_NOEXTRACT_QUIRK


def test_damage_is_found_like_pacman_qkk(root):
    flip_byte(root / "usr/bin/demo", 5)  # same size, same mtime: only the digest tells
    truncate(root / "usr/share/demo/data.bin", 100)
    os.unlink(root / "usr/share/demo/notes.txt")
    with kept_times(root / "usr/bin/other"):
        replace_with_fifo(root / "usr/bin/other")
    link = root / "usr/bin/demo-link"
    link.unlink()
    link.symlink_to("/etc/shadow")
    os.chmod(root / "usr/lib/other/lib.so", 0o666)
    with kept_times(root / "etc/demo.conf"):
        (root / "etc/demo.conf").write_text("key = 2\n")
    run = audit(root)
    assert run.code == 2, run.stdout + run.stderr
    codes = {path: f["code"] for path, f in by_path(run).items()}
    assert codes == {
        "/usr/bin/demo": "content-differs",
        "/usr/share/demo/data.bin": "content-differs",
        "/usr/share/demo/notes.txt": "missing",
        "/usr/bin/other": "wrong-type",
        "/usr/bin/demo-link": "link-differs",
        "/usr/lib/other/lib.so": "metadata-differs",
        "/etc/demo.conf": "conffile-changed",
    }
    # pacman -Qkk reports the same files (it does not count an edited backup file as altered).
    reported = {path for path, code in codes.items() if code != "conffile-changed"}
    assert pacfix.check(root) - PACMAN_NOEXTRACT_QUIRK == {
        ("other" if "other" in path else "demo", path) for path in reported
    }
    found = by_path(run)
    flipped = found["/usr/bin/demo"]["details"]
    assert flipped["package"] == "demo" and flipped["version"] == "1.0-1"
    assert flipped["architecture"] == "x86_64"
    assert flipped["expected_sha256"] == hashlib.sha256(DEMO["/usr/bin/demo"][0].encode()).hexdigest()
    assert found["/usr/bin/other"]["details"]["found"] == "FIFO"
    assert found["/usr/lib/other/lib.so"]["details"]["version"] == "2:2.5-3"
    assert found["/etc/demo.conf"]["details"]["changed_after_install"] is False
    assert found["/etc/demo.conf"]["severity"] == "warning"


def test_a_change_after_installation_is_a_warning_unless_it_is_in_the_window(root):
    notes = root / "usr/share/demo/notes.txt"
    notes.write_text("edited by the administrator\n")
    installed = (root / "var/lib/pacman/local/demo-1.0-1/desc").stat().st_mtime
    os.utime(notes, (installed + 3600, installed + 3600))  # an hour after the installation
    run = audit(root)
    assert run.code == 1, run.stdout
    finding = by_path(run)["/usr/share/demo/notes.txt"]
    assert finding["code"] == "modified-after-install" and finding["severity"] == "warning"
    run = audit(root, "--window", "2000-01-01..2100-01-01")
    assert run.code == 2
    finding = by_path(run)["/usr/share/demo/notes.txt"]
    assert finding["code"] == "content-differs" and finding["details"]["modified_in_window"] is True


def test_a_damaged_mtree_is_reported_and_the_rest_is_verified(root):
    local = root / "var/lib/pacman/local"
    mtree = local / "demo-1.0-1/mtree"
    data = mtree.read_bytes()
    mtree.write_bytes(data[: len(data) // 2])  # a gzip stream cut short
    (local / "other-2:2.5-3/desc").write_bytes(b"\x00" * 64)
    flip_byte(root / "usr/bin/other", 0)
    run = audit(root)
    assert run.code == 2, run.stdout
    damaged = run.findings("pacman", "database-damaged")
    files = {f["details"]["file"] for f in damaged}
    assert "/var/lib/pacman/local/demo-1.0-1/mtree" in files
    assert "/var/lib/pacman/local/other-2:2.5-3/desc" in files
    # The package whose desc is damaged is still verified, named after its directory.
    other = by_path(run)["/usr/bin/other"]
    assert other["code"] == "content-differs"
    assert other["details"]["package"] == "other" and other["details"]["version"] == "2:2.5-3"
    # What the cut mtree no longer describes is still checked for existence (and not called verified).
    assert run.check("pacman")["stats"]["files_unverified"] > 0
    assert run.check("pacman")["status"] == "critical"


def test_hostile_names_and_links_out_of_the_root(root):
    flip_byte(root / HOSTILE.lstrip("/"), 0)
    # A packaged directory moved away and replaced by an absolute symlink: it resolves inside the
    # image (where the file is intact), never on this host (where it does not exist).
    moved = root / "usr/lib/x86_64-linux-gnu/fsaudit-moved"
    moved.parent.mkdir(parents=True)
    shutil.move(root / "usr/lib/other", moved)
    os.symlink("/usr/lib/x86_64-linux-gnu/fsaudit-moved", root / "usr/lib/other")
    assert not Path("/usr/lib/x86_64-linux-gnu/fsaudit-moved").exists()
    run = audit(root)
    assert run.code == 2
    found = run.findings("pacman")
    hostile_finding = next(f for f in found if f["code"] == "content-differs")
    assert hostile_finding["details"]["path_b64"]
    assert "\\xe9" in hostile_finding["path"]
    assert [f["code"] for f in found] == ["content-differs"]
    os.unlink(moved / "lib.so")
    codes = {f["path"]: f["code"] for f in audit(root).findings("pacman")}
    assert codes["/usr/lib/other/lib.so"] == "missing"
    # The finding keeps the name exactly (renderers make it inert); its raw bytes are in path_b64.
    assert base64.b64decode(hostile_finding["details"]["path_b64"]) == os.fsencode(HOSTILE)


def test_advice_names_the_image_not_this_host(root):
    flip_byte(root / "usr/bin/demo", 5)
    run = audit(root)
    advice = by_path(run)["/usr/bin/demo"]["advice"]
    assert "inside the VM" in advice and str(root) in advice and "pacman -S demo" in advice


def test_files_that_cannot_be_read_without_root_are_not_damage(pristine):
    run = fsaudit("audit", "--root", pristine, "--check", "pacman", "--format", "json", user="nobody")
    assert run.code == 3, run.stdout + run.stderr
    check = run.check("pacman")
    assert check["findings"] == []
    assert check["stats"]["not_checked_permission"] == 1
    assert "permission denied" in check["reason"]


def test_the_cached_package_gives_the_packaged_bytes(root, packages):
    copied = pacfix.cache(root, packages["demo"])
    target = Target(root)
    settings = read_settings(target)
    package = Package("demo", "1.0-1", "x86_64")
    found = cache.find(target, settings, package)
    assert found == b"/var/cache/pacman/pkg/" + copied.name.encode()
    data = cache.read_file(target, found, package, b"/usr/share/demo/data.bin")
    assert data == DEMO["/usr/share/demo/data.bin"]
    with pytest.raises(cache.CacheError):
        cache.read_file(target, found, Package("demo", "1.0-2", "x86_64"), b"/usr/bin/demo")
    flip_byte(root / "usr/bin/demo", 5)
    finding = by_path(audit(root))["/usr/bin/demo"]
    assert finding["details"]["cached_package"] == os.fsdecode(found)


def test_mtree_escapes_are_read_like_libarchive(root):
    # The local mtree of the demo package holds the hostile name as octal escapes.
    text = gzip.decompress((root / "var/lib/pacman/local/demo-1.0-1/mtree").read_bytes())
    assert b"\\033" in text and b"\\015" in text and b"\\351" in text
