"""The portage checker against Gentoo roots whose package database (`/var/db/pkg`) is written in the
format Portage writes, with real files installed beside it (Portage and qcheck have no Debian
package)."""

from __future__ import annotations

import base64
import os

import pytest

from fixtures import portage as gentoo
from fixtures.corrupt import flip_byte, kept_times, replace_with_fifo, truncate
from fsaudit.target import Target
from fsaudit_checks.portage.protect import read_config_protect
from tests.conftest import audit_root, copy_root, fsaudit, world_readable_directory

HOSTILE = os.fsdecode(b"/usr/share/demo/caf\xe9 \x1b[31mred")
DEMO = {
    "/usr/bin/demo": ("#!/bin/sh\necho demo\n" * 40, 0o755),
    "/usr/bin/demo-link": ("link", "demo"),
    "/usr/lib64/libdemo.so.1": b"\x7fELF" + bytes(5000),
    "/etc/demo.conf": "key = 1\n",
    "/etc/demo.d/masked/defaults.conf": "masked = 1\n",
    "/etc/env.d/50demo": "PATH=/opt/demo/bin\n",
    "/opt/demo/conf/site.conf": "protected by make.conf\n",
    "/usr/share/demo/notes.txt": "notes\n" * 100,
    "/usr/share/demo/secret": ("private\n", 0o600),
    "/var/lib/demo/control": ("fifo",),
    HOSTILE: "hostile name\n",
}
OTHER = {"/usr/bin/other": ("other program\n" * 50, 0o755), "/usr/share/other/data": "data\n" * 10}


@pytest.fixture(scope="module")
def pristine():
    with world_readable_directory("fsaudit-portage-") as base:
        root = gentoo.make_root(base / "root")
        gentoo.install(root, "app-misc", "demo-1.2.3_p4-r1", DEMO, slot="1")
        gentoo.install(root, "dev-libs", "other-2.0", OTHER)
        yield root


@pytest.fixture
def root(pristine, tmp_path):
    return copy_root(pristine, tmp_path)


def audit(root, *args):
    return audit_root("portage", root, *args)


def by_path(run) -> dict:
    return run.by_path("portage")


def test_clean_root_is_ok(root):
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("portage")
    assert check["findings"] == []
    stats = check["stats"]
    assert stats["packages"] == stats["packages_verified"] == 2
    assert stats["files_verified"] == 9
    assert stats["conffiles_verified"] == 2  # /etc/demo.conf and make.conf's /opt/demo/conf
    assert stats["symlinks_verified"] == 1 and stats["special_files_verified"] == 1


def test_config_protect_is_stacked_like_portage(root):
    protect = read_config_protect(Target(root))
    assert protect.is_protected(b"/etc/demo.conf")
    assert protect.is_protected(b"/opt/demo/conf/site.conf")  # make.conf adds it
    assert protect.is_protected(b"/usr/share/gnupg/qualified.txt")  # env.d (profile.env)
    assert not protect.is_protected(b"/etc/env.d/50demo")  # make.globals masks it
    assert not protect.is_protected(b"/etc/demo.d/masked/defaults.conf")  # the profile masks it
    assert not protect.is_protected(b"/etc/ca-certificates.conf")  # the parent profile masks it
    assert not protect.is_protected(b"/etcetera/file")


def test_damage_is_found_and_classified(root):
    flip_byte(root / "usr/bin/demo", 7)  # same size, same mtime
    truncate(root / "usr/share/demo/notes.txt", 10)
    os.unlink(root / "usr/lib64/libdemo.so.1")
    with kept_times(root / "usr/bin/other"):
        replace_with_fifo(root / "usr/bin/other")
    os.unlink(root / "var/lib/demo/control")
    (root / "var/lib/demo/control").write_text("a file where the FIFO was\n")
    link = root / "usr/bin/demo-link"
    link.unlink()
    link.symlink_to("/etc/shadow")
    for path in ("etc/demo.conf", "etc/demo.d/masked/defaults.conf"):
        with kept_times(root / path):
            (root / path).write_text("changed = 1\n")
    run = audit(root)
    assert run.code == 2, run.stdout + run.stderr
    codes = {path: f["code"] for path, f in by_path(run).items()}
    assert codes == {
        "/usr/bin/demo": "content-differs",
        "/usr/share/demo/notes.txt": "content-differs",
        "/usr/lib64/libdemo.so.1": "missing",
        "/usr/bin/other": "wrong-type",
        "/var/lib/demo/control": "wrong-type",
        "/usr/bin/demo-link": "link-differs",
        "/etc/demo.conf": "conffile-changed",
        "/etc/demo.d/masked/defaults.conf": "content-differs",
    }
    demo = by_path(run)["/usr/bin/demo"]
    assert demo["details"]["package"] == "app-misc/demo"
    assert demo["details"]["version"] == "1.2.3_p4-r1"
    assert demo["details"]["slot"] == "1"
    assert demo["details"]["expected_md5"] and demo["details"]["recorded_mtime"]
    assert "emerge --oneshot =app-misc/demo-1.2.3_p4-r1" in demo["advice"]
    assert "inside the VM" in demo["advice"] and str(root) in demo["advice"]
    assert by_path(run)["/usr/bin/demo-link"]["details"]["target"] == "/etc/shadow"


def test_a_change_after_installation_is_a_warning_unless_it_is_in_the_window(root):
    (root / "usr/share/demo/notes.txt").write_text("edited by hand\n")
    run = audit(root)
    assert run.code == 1, run.stdout
    assert by_path(run)["/usr/share/demo/notes.txt"]["code"] == "modified-after-install"
    run = audit(root, "--window", "2000-01-01..2100-01-01")
    assert run.code == 2
    assert by_path(run)["/usr/share/demo/notes.txt"]["code"] == "content-differs"


def test_a_damaged_contents_file_is_reported_and_the_rest_is_verified(root):
    contents = root / "var/db/pkg/app-misc/demo-1.2.3_p4-r1/CONTENTS"
    lines = contents.read_bytes().splitlines()
    lines[3] = b"\x00\x00garbage where a line was"
    lines.insert(5, b"obj /usr/bin/broken nothex 12")
    contents.write_bytes(b"\n".join(lines) + b"\n")
    os.unlink(root / "var/db/pkg/dev-libs/other-2.0/CONTENTS")
    flip_byte(root / "usr/bin/demo", 7)
    run = audit(root)
    assert run.code == 2
    damaged = run.findings("portage", "database-damaged")
    assert {(f["details"]["file"], f["details"].get("line")) for f in damaged} == {
        ("/var/db/pkg/app-misc/demo-1.2.3_p4-r1/CONTENTS", 4),
        ("/var/db/pkg/app-misc/demo-1.2.3_p4-r1/CONTENTS", 6),
        ("/var/db/pkg/dev-libs/other-2.0/CONTENTS", None),
    }
    assert by_path(run)["/usr/bin/demo"]["code"] == "content-differs"
    # demo's files are all verified; other's, whose CONTENTS is gone, cannot be.
    assert run.check("portage")["stats"]["files_verified"] == 7


def test_hostile_names(root):
    flip_byte(root / HOSTILE.lstrip("/"), 0)
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("portage")
    assert base64.b64decode(finding["details"]["path_b64"]) == os.fsencode(HOSTILE)


def test_files_that_cannot_be_read_without_root_are_not_damage(pristine):
    run = fsaudit("audit", "--root", pristine, "--check", "portage", "--format", "json", user="nobody")
    assert run.code == 3, run.stdout + run.stderr
    check = run.check("portage")
    assert check["findings"] == []
    assert check["stats"]["not_checked_permission"] == 1
