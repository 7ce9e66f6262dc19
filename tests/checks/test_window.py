"""Checker `window`: real trees with chosen times, awkward entries, mounts below the root, and
unreadable and vanishing directories, through the real CLI."""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest

from fixtures import debian as debfix
from fixtures.disk import ext4_with_damaged_directory
from fixtures.window import IN_WINDOW, OLD, WINDOW, age_directories, build_awkward_tree, set_mtime
from fsaudit.checker import Context
from fsaudit.target import Target
from fsaudit.window import parse_window
from fsaudit_checks.window import WindowChecker, _outermost
from fsaudit_checks.window.mounts import Mount, excluded_mounts, parse_mountinfo
from tests.conftest import REPO, Run, fsaudit, require_program

SCHEMA = json.loads((REPO / "fsaudit" / "schema" / "report.schema.json").read_text())


def audit(root, *args, **kwargs) -> Run:
    return fsaudit(
        "audit", "--root", root, "--check", "window", "--format", "json", *args, timeout=120, **kwargs
    )


@pytest.fixture
def image(tmp_path):
    root = tmp_path / "root"
    changed = build_awkward_tree(root)
    return root, changed


def by_path(run: Run, code: str) -> dict:
    return {f["path"]: f for f in run.findings("window", code)}


# -- the walk over awkward entries ------------------------------------------------------------------


def test_reports_what_changed_in_the_window_and_copes_with_every_kind_of_entry(image):
    root, changed = image
    run = audit(root, "--window", WINDOW)
    assert run.code == 1, run.stderr
    jsonschema.validate(run.report, SCHEMA)
    check = run.check("window")
    assert check["status"] == "warning"
    modified = by_path(run, "modified-in-window")
    assert set(modified) == set(changed.values())
    assert all(f["severity"] == "warning" and not f["details"]["verified"] for f in modified.values())
    assert modified["/srv/data/pipe"]["details"]["kind"] == "FIFO"
    assert modified["/srv/data/sock"]["details"]["kind"] == "socket"
    assert modified["/srv/data/null"]["details"]["kind"] == "character device"
    assert modified["/srv/data/loop-a"]["details"]["kind"] == "symlink"
    assert modified["/srv/data/report.txt"]["details"]["owner"] == "alice"
    raw = base64.b64decode(modified["/srv/data/caf\\xe9.txt"]["details"]["path_b64"])
    assert raw == b"/srv/data/caf\xe9.txt"
    # The directory that changed counts its entries: 10 names, 6 of them changed in the window.
    directory = by_path(run, "directory-changed-in-window")
    assert set(directory) == {"/srv/data"}
    details = directory["/srv/data"]["details"]
    assert details["entries"] == 10 and details["entries_in_window"] == 6
    assert details["files_not_verified"] == 9 and "entry_names" not in details
    # Symlinks were not followed: the walk saw exactly the entries of the tree.
    on_disk = sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))
    assert check["stats"]["entries_scanned"] == on_disk
    assert not any("/escape/" in (f["path"] or "") for f in check["findings"])
    assert "changed-in-window" not in run.codes("window")
    assert check["stats"]["at_risk_not_verified"] == len(changed)
    assert check["stats"]["at_risk_by_directory"]["/srv"]["files_not_verified"] == 6
    assert check["stats"]["at_risk_by_owner"]["alice"]["files"] == 1
    summaries = {f["subject"] for f in run.findings("window", "summary-by-directory")}
    assert summaries == {"top-level directory /srv", "top-level directory /var"}


def test_text_report_names_the_files_and_the_counts(image):
    root, _ = image
    run = fsaudit("audit", "--root", root, "--check", "window", "--window", WINDOW, timeout=120)
    assert run.code == 1
    assert "/srv/data/report.txt" in run.stdout and "no checker verified it" in run.stdout
    assert "top-level directory /srv" in run.stdout


def test_a_ctime_in_the_window_without_its_mtime_is_a_change_too(tmp_path):
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)
    (root / "opt" / "installed.so").write_bytes(b"library\n")
    set_mtime(root / "opt" / "installed.so", OLD)  # as dpkg or tar install it: old mtime, new ctime
    now = datetime.now(timezone.utc)
    window = f"{(now - timedelta(hours=1)).isoformat()}..{(now + timedelta(hours=1)).isoformat()}"
    run = audit(root, "--window", window)
    assert run.code == 1
    changed = by_path(run, "changed-in-window")
    assert "/opt/installed.so" in changed
    assert changed["/opt/installed.so"]["details"]["mtime"].startswith("2010-01-01")
    assert "/opt/installed.so" not in by_path(run, "modified-in-window")
    assert {"/", "/opt"} <= set(by_path(run, "directory-changed-in-window"))


def test_nothing_in_the_window_is_ok(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("vm\n")
    set_mtime(root / "etc" / "hostname", OLD)
    age_directories(root)
    run = audit(root, "--window", WINDOW)
    assert run.code == 0
    assert run.check("window")["findings"] == []
    assert run.check("window")["stats"]["entries_scanned"] == 2


# -- where the window comes from, and the options ------------------------------------------------------


def test_without_a_window_the_check_is_skipped_with_the_reason(image):
    root, _ = image
    run = audit(root)
    assert run.code == 0
    assert run.check("window")["status"] == "skipped"
    assert "--window" in run.check("window")["reason"]


def test_the_window_can_be_set_for_this_check_alone(image, tmp_path):
    root, changed = image
    run = audit(root, "--set", f"window.window={WINDOW}")
    assert set(by_path(run, "modified-in-window")) == set(changed.values())
    config = tmp_path / "fsaudit.toml"
    config.write_text(f'[checks.window]\nwindow = "{WINDOW}"\n')
    run = audit(root, "--config", config)
    assert set(by_path(run, "modified-in-window")) == set(changed.values())
    # The check's own window wins over the audit's.
    run = audit(root, "--window", "2020-01-01..2020-01-02", "--set", f"window.window={WINDOW}")
    assert set(by_path(run, "modified-in-window")) == set(changed.values())


def test_a_bad_window_option_is_a_usage_error_before_anything_runs(image):
    root, _ = image
    run = audit(root, "--set", "window.window=last tuesday")
    assert run.code == 3
    assert "window.window" in run.stderr and "START..END" in run.stderr


def test_paths_limit_the_walk_and_list_entries_names_them(image):
    root, _ = image
    run = audit(root, "--window", WINDOW, "--set", "window.paths=/srv", "--set", "window.list_entries=true")
    paths = set(by_path(run, "modified-in-window"))
    assert "/var/lib/app/state.db" not in paths and "/srv/data/report.txt" in paths
    names = by_path(run, "directory-changed-in-window")["/srv/data"]["details"]["entry_names"]
    assert "report.txt" in names and "caf\\xe9.txt" in names and len(names) == 10
    in_window = by_path(run, "directory-changed-in-window")["/srv/data"]["details"]["names_in_window"]
    assert in_window == sorted(["caf\\xe9.txt", "loop-a", "null", "pipe", "report.txt", "sock"])


def test_a_missing_path_is_reported_not_fatal(image):
    root, _ = image
    run = audit(root, "--window", WINDOW, "--set", "window.paths=/nonexistent,/srv")
    assert run.code == 1
    assert "/nonexistent" in by_path(run, "unreadable-directory")
    assert "/srv/data/report.txt" in by_path(run, "modified-in-window")


def test_the_list_is_cut_with_a_count_beyond_list_limit(image):
    root, changed = image
    run = audit(root, "--window", WINDOW, "--set", "window.list_limit=2")
    assert len(run.findings("window", "modified-in-window")) == 2
    check = run.check("window")
    assert check["stats"]["files_modified_in_window"] == len(changed)
    [cut] = [group for group in check["not_listed"] if group["code"] == "modified-in-window"]
    assert (cut["severity"], cut["count"]) == ("warning", len(changed) - 2)
    assert cut["last"].startswith("modified in the window")


# -- other checkers' verified files -------------------------------------------------------------------


def test_files_the_baseline_checker_verified_are_info_and_counted_apart(image, tmp_path):
    root, changed = image
    recorded = tmp_path / "data.baseline"
    made = fsaudit("baseline", "create", "/srv/data", "--root", root, "--output", recorded)
    assert made.code == 0, made.stderr
    run = audit(root, "--check", "baseline", "--window", WINDOW, "--set", f"baseline.file={recorded}")
    assert run.code == 1, run.stderr
    assert run.check("baseline")["status"] == "ok"
    modified = by_path(run, "modified-in-window")
    verified = {path for path, f in modified.items() if f["details"]["verified"]}
    # Regular files under /srv/data were hashed against the baseline; the rest nothing verified.
    assert verified == {"/srv/data/report.txt", "/srv/data/caf\\xe9.txt"}
    assert all(modified[path]["severity"] == "info" for path in verified)
    assert modified["/var/lib/app/state.db"]["severity"] == "warning"
    assert modified["/srv/data/pipe"]["severity"] == "warning"
    stats = run.check("window")["stats"]
    assert stats["at_risk_verified"] == 2 and stats["at_risk_not_verified"] == len(changed) - 2
    assert stats["at_risk_by_directory"]["/srv"]["files_not_verified"] == 4
    # old.txt (not in the window) was verified too: 9 files, 3 verified.
    assert by_path(run, "directory-changed-in-window")["/srv/data"]["details"]["files_not_verified"] == 6


def test_a_path_verified_through_a_symlinked_directory_counts_at_its_real_place(image):
    root, _ = image
    (root / "bin").symlink_to("usr/bin")
    set_mtime(root / "usr" / "bin" / "tool", IN_WINDOW)
    # A package lists /bin/tool (as dpkg does on merged-/usr); the walk finds /usr/bin/tool.
    context = Context(window=parse_window(WINDOW), verified={b"/bin/tool"})
    checker = WindowChecker({}, context)
    target = Target(root)
    assert checker.applies(target)
    tool = [f for f in checker.run(target) if f.path == "/usr/bin/tool"]
    assert [(f.code, f.severity.value, f.details["verified"]) for f in tool] == [
        ("modified-in-window", "info", True)
    ]


def test_self_check_with_a_window_lists_what_changed_under_the_customers_paths(image):
    root, _ = image
    run = fsaudit("self-check", root / "srv", "--window", WINDOW, "--format", "json", timeout=120)
    assert run.code in (1, 2), run.stderr
    paths = set(by_path(run, "modified-in-window"))
    assert f"{root}/srv/data/report.txt" in paths
    assert not any(path.startswith(f"{root}/var") for path in paths)


# -- mounts, permissions, vanishing entries --------------------------------------------------------------


@contextlib.contextmanager
def mounted(*mounts):
    """Mount each (args, point) in turn; unmount them all afterwards, even on failure."""
    done = []
    try:
        for args, point in mounts:
            point.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *args, str(point)], check=True, capture_output=True)
            done.append(point)
        yield
    finally:
        for point in reversed(done):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_pseudo_and_memory_filesystems_and_bind_loops_below_the_root_are_not_walked(image):
    root, changed = image
    with mounted(
        (["-t", "tmpfs", "tmpfs"], root / "run"),
        (["-t", "proc", "proc"], root / "proc"),
        (["--bind", str(root)], root / "mnt" / "loop"),
    ):
        (root / "run" / "fresh.pid").write_text("123\n")
        set_mtime(root / "run" / "fresh.pid", IN_WINDOW)
        run = audit(root, "--window", WINDOW)
    assert run.code == 1, run.stderr
    stats = run.check("window")["stats"]
    assert stats["mounts_skipped"] == 3
    assert any(s.startswith("/proc (proc") for s in stats["skipped_mounts"])
    assert any(s.startswith("/mnt/loop (bind mount of") for s in stats["skipped_mounts"])
    paths = {f["path"] for f in run.check("window")["findings"] if f["path"]}
    assert not any(p.startswith(("/run", "/proc", "/mnt")) for p in paths)
    assert set(by_path(run, "modified-in-window")) == set(changed.values())


def _audit_without_dac_override(root, *args) -> Run:
    """Run fsaudit as root without the capabilities that bypass file permissions, as a user would."""
    command = [
        "setpriv", "--bounding-set=-dac_override,-dac_read_search",
        sys.executable, "-m", "fsaudit", "audit", "--root", str(root), "--check", "window",
        "--format", "json", *args,
    ]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    return Run(subprocess.run(command, capture_output=True, text=True, env=env, timeout=120))


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities needs root")
def test_unreadable_directories_are_reported_and_the_walk_goes_on(image):
    root, changed = image
    if not shutil.which("setpriv"):
        pytest.fail("setpriv is missing: apt-get install util-linux")
    locked = root / "srv" / "locked"
    listable = root / "srv" / "listable"
    for directory in (locked, listable):
        directory.mkdir()
        (directory / "secret").write_text("s\n")
        set_mtime(directory / "secret", IN_WINDOW)
    set_mtime(locked, IN_WINDOW)
    locked.chmod(0o000)
    listable.chmod(0o444)  # names can be read, entries cannot be examined
    try:
        run = _audit_without_dac_override(root, "--window", WINDOW)
    finally:
        locked.chmod(0o755)
        listable.chmod(0o755)
    assert run.code == 1, run.stderr
    unreadable = by_path(run, "unreadable-directory")
    assert set(unreadable) == {"/srv/locked", "/srv/listable"}
    assert unreadable["/srv/locked"]["details"]["errno"] == "EACCES"
    assert unreadable["/srv/listable"]["details"]["entries_not_examined"] == 1
    locked_dir = by_path(run, "directory-changed-in-window")["/srv/locked"]
    assert "could not be listed" in locked_dir["message"]
    assert set(by_path(run, "modified-in-window")) == set(changed.values())
    assert run.check("window")["stats"]["directories_unreadable"] == 2


class VanishingTarget(Target):
    """A real Target on a tree that other processes change during the walk: names starting with
    `gone` disappear between the listing of their directory and their lstat (their lstat answers
    ENOENT, as it does when that race happens)."""

    def scan(self, *args, **kwargs):
        for directory, host, listing in super().scan(*args, **kwargs):
            if not isinstance(listing, OSError):
                listing.records = [
                    (name, kind, OSError(errno.ENOENT, "gone", name) if name.startswith(b"gone") else st)
                    for name, kind, st in listing.records
                ]
            yield directory, host, listing


def test_entries_vanishing_during_the_walk_are_counted_not_fatal(tmp_path):
    root = tmp_path / "root"
    (root / "srv" / "gone-dir").mkdir(parents=True)
    (root / "srv" / "gone-dir" / "inside").write_text("x")
    (root / "srv" / "gone-file").write_text("x")
    (root / "srv" / "stays").write_text("x")
    for path in ("srv/gone-dir/inside", "srv/gone-file", "srv/stays"):
        set_mtime(root / path, IN_WINDOW)
    checker = WindowChecker({}, Context(window=parse_window(WINDOW)))
    target = VanishingTarget(root)
    assert checker.applies(target)
    findings = list(checker.run(target))
    assert {f.path for f in findings if f.code == "modified-in-window"} == {"/srv/stays"}
    assert checker.stats["entries_vanished"] == 2
    assert not checker.incomplete_reasons


# -- pure logic: the mount table --------------------------------------------------------------------

MOUNTINFO = b"""\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:22 / /run rw - tmpfs tmpfs rw
30 22 8:1 /srv/image /mnt/vm42 rw - ext4 /dev/sda1 rw
31 30 0:23 / /mnt/vm42/proc rw - proc proc rw
32 30 0:24 / /mnt/vm42/dev/shm rw - tmpfs tmpfs rw
33 30 8:17 / /mnt/vm42/home rw - xfs /dev/sdb1 rw
34 30 0:40 / /mnt/vm42/srv/share rw - nfs4 fileserver:/share rw
35 33 8:1 /srv/image /mnt/vm42/home/loop rw - ext4 /dev/sda1 rw
36 30 8:18 / /mnt/vm42/data\\040disk rw - ext4 /dev/sdb2 rw
37 31 0:25 / /mnt/vm42/proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
"""


def test_mountinfo_is_parsed_with_escaped_names():
    mounts = parse_mountinfo(MOUNTINFO + b"garbage line\n\n")
    assert len(mounts) == 11
    assert mounts[9] == Mount(36, "8:18", b"/", b"/mnt/vm42/data disk", "ext4")


def test_only_disk_filesystems_below_the_top_are_walked():
    excluded = excluded_mounts(parse_mountinfo(MOUNTINFO), b"/mnt/vm42")
    assert set(excluded) == {
        b"/mnt/vm42/proc",
        b"/mnt/vm42/dev/shm",
        b"/mnt/vm42/srv/share",
        b"/mnt/vm42/home/loop",
    }
    assert "network" in excluded[b"/mnt/vm42/srv/share"]
    assert excluded[b"/mnt/vm42/home/loop"].startswith("bind mount of /mnt/vm42")


def test_the_live_root_skips_its_own_pseudo_filesystems_and_the_image_is_walked_once():
    excluded = excluded_mounts(parse_mountinfo(MOUNTINFO), b"/")
    # /mnt/vm42 shows /srv/image of the root filesystem again: walked once, at /srv/image; what is
    # mounted below /mnt/vm42 needs no entry of its own.
    assert set(excluded) == {b"/proc", b"/run", b"/mnt/vm42"}
    assert excluded[b"/mnt/vm42"].startswith("bind mount of /srv/image")


def test_a_top_on_tmpfs_is_still_walked():
    assert excluded_mounts(parse_mountinfo(MOUNTINFO), b"/run/user") == {}


def test_paths_inside_other_paths_are_walked_once():
    assert _outermost([b"/srv/data", b"/srv", b"/var", b"/srv", b"/varnish"]) == [
        b"/srv",
        b"/var",
        b"/varnish",
    ]
    assert _outermost([b"/srv", b"/"]) == [b"/"]


def test_an_io_error_on_a_directory_is_critical_and_the_walk_goes_on(tmp_path):
    """A real ext4 image whose directory block was overwritten: listing it fails its checksum."""
    require_program("debugfs", "e2fsprogs")
    source = tmp_path / "source"
    (source / "srv" / "bad").mkdir(parents=True)
    for number in range(40):
        (source / "srv" / "bad" / f"file-with-a-long-name-{number:03d}").write_text("x")
    (source / "srv" / "good").write_text("x")
    set_mtime(source / "srv" / "good", IN_WINDOW)
    set_mtime(source / "srv" / "bad", IN_WINDOW)
    set_mtime(source / "srv", OLD)
    with ext4_with_damaged_directory(source, "/srv/bad", tmp_path / "disk") as root:
        run = audit(root, "--window", WINDOW)
    assert run.code == 2, run.stderr
    read_error = by_path(run, "read-error")["/srv/bad"]
    assert read_error["severity"] == "critical"
    assert read_error["details"]["errno"] in ("EBADMSG", "EUCLEAN", "EIO")
    assert "could not be listed" in by_path(run, "directory-changed-in-window")["/srv/bad"]["message"]
    assert "/srv/good" in by_path(run, "modified-in-window")


def test_files_the_debian_checker_verified_are_info_and_the_rest_is_listed(tmp_path):
    require_program("dpkg-deb", "dpkg")
    root = debfix.make_root(tmp_path / "root")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")  # merged-/usr: the package lists /bin/tool
    deb = debfix.make_deb(
        tmp_path / "debs",
        "tool",
        files={"/bin/tool": "#!/bin/sh\necho tool\n", "/usr/share/doc/tool/README": "read me\n"},
    )
    debfix.install(root, deb)
    (root / "srv").mkdir()
    (root / "srv" / "notes.txt").write_text("the customer's own file\n")
    now = datetime.now(timezone.utc)
    window = f"{(now - timedelta(hours=1)).isoformat()}..{(now + timedelta(hours=1)).isoformat()}"
    run = audit(root, "--check", "debian", "--window", window)
    assert run.check("debian")["status"] == "ok", run.check("debian")
    assert run.code == 1, run.stderr
    at_risk = {**by_path(run, "modified-in-window"), **by_path(run, "changed-in-window")}
    for path in ("/usr/bin/tool", "/usr/share/doc/tool/README"):
        assert at_risk[path]["severity"] == "info" and at_risk[path]["details"]["verified"] is True
    assert at_risk["/srv/notes.txt"]["severity"] == "warning"
    assert at_risk["/var/lib/dpkg/status"]["details"]["verified"] is False
    summary = run.check("window")["stats"]["at_risk_by_directory"]
    assert summary["/usr"]["files_not_verified"] == 0 and summary["/srv"]["files_not_verified"] == 1
