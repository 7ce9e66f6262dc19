"""The `debian` checker against real packages built with dpkg-deb and installed with dpkg --root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from fixtures.corrupt import (
    flip_byte,
    kept_times,
    lose,
    replace_with_directory,
    replace_with_fifo,
    truncate,
    zero_block,
)
from fixtures.debian import divert, dpkg, install, make_deb, make_root, verify_with_dpkg
from tests.conftest import Run, fsaudit, require_program

# Three 4 KiB blocks that differ from each other, so damage to one block is visible.
BINARY = b"".join(bytes([n]) * 4096 for n in (1, 2, 3))
SAMPLE = {
    "/usr/bin/sample": BINARY,
    "/usr/share/doc/sample/README": b"read me\n",
    "/usr/share/doc/sample/copyright": b"free\n",
    "/usr/lib/sample/data/table": b"1 2 3\n",
    "/usr/lib/sample/current": ("symlink", "data/table"),
    "/var/lib/sample": ("dir",),
    "/etc/sample.conf": b"setting = 1\n",
}


@pytest.fixture(autouse=True)
def _programs():
    require_program("dpkg-deb", "dpkg")
    require_program("dpkg", "dpkg")


def sample_root(tmp_path, files=None, cache=False, **deb):
    """A root with the package `sample` installed; its .deb in the apt cache when `cache`."""
    root = make_root(tmp_path / "root")
    debs = tmp_path / "debs"
    debs.mkdir(exist_ok=True)
    package = make_deb(debs, "sample", files=files or SAMPLE, conffiles=["/etc/sample.conf"], **deb)
    install(root, package)
    if cache:
        shutil.copy(package, root / "var/cache/apt/archives")
    return root


def audit(root, *args, **kwargs):
    return fsaudit("audit", "--root", root, "--check", "debian", "--format", "json", *args, **kwargs)


def dpkg_says(root) -> dict:
    """Path -> dpkg --verify's flags for that path."""
    output = verify_with_dpkg(root).stdout
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+(?:c\s+)?(/.*)$", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def paths(run, code) -> set:
    return {f["path"] for f in run.findings("debian", code)}


# -- clean systems -------------------------------------------------------------------------------


def test_clean_root_is_ok(tmp_path):
    root = sample_root(tmp_path)
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("debian")
    assert check["status"] == "ok"
    assert check["findings"] == []
    assert check["stats"]["files_verified"] == 4
    assert check["stats"]["conffiles_verified"] == 1
    assert dpkg_says(root) == {}


def test_no_dpkg_database_is_skipped(tmp_path):
    run = audit(tmp_path)
    assert run.code == 0
    assert run.check("debian")["status"] == "skipped"


# -- damaged files ---------------------------------------------------------------------------------


def test_flipped_byte_with_mtime_kept_is_found_like_dpkg_finds_it(tmp_path):
    root = sample_root(tmp_path)
    flip_byte(root / "usr/bin/sample", 5000)
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("debian", "content-differs")
    assert finding["path"] == "/usr/bin/sample"
    assert finding["severity"] == "critical"
    assert finding["subject"] == "sample 1.0-1"
    assert finding["details"]["package"] == "sample"
    assert finding["details"]["version"] == "1.0-1"
    assert finding["details"]["architecture"] == "all"
    assert "apt-get install --reinstall sample=1.0-1" in finding["advice"]
    assert finding["details"]["classification"] == "unknown"
    assert "5" in dpkg_says(root)["/usr/bin/sample"]


def test_truncated_file_is_classified_with_the_cached_deb(tmp_path):
    root = sample_root(tmp_path, cache=True)
    truncate(root / "usr/bin/sample", 5000)
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("debian", "content-differs")
    assert finding["details"]["classification"] == "truncated"


def test_zero_filled_block_is_classified_with_and_without_the_cached_deb(tmp_path):
    root = sample_root(tmp_path, cache=True)
    zero_block(root / "usr/bin/sample", 4096)
    (finding,) = audit(root).findings("debian", "content-differs")
    assert finding["details"]["classification"] == "zero-filled"
    assert finding["details"]["differing_blocks"] == 1
    assert finding["details"]["first_difference"] == 4096
    os.unlink(next((root / "var/cache/apt/archives").glob("*.deb")))
    (finding,) = audit(root).findings("debian", "content-differs")
    assert finding["details"]["classification"] == "unknown"
    assert finding["details"]["zero_blocks"] == 1


def test_empty_file_is_named_as_such(tmp_path):
    root = sample_root(tmp_path)
    truncate(root / "usr/bin/sample", 0)
    (finding,) = audit(root).findings("debian", "content-differs")
    assert finding["details"]["classification"] == "empty"


def test_deleted_file_directory_and_symlink_are_missing(tmp_path):
    root = sample_root(tmp_path)
    lose(root / "usr/bin/sample")
    lose(root / "usr/lib/sample/current")
    lose(root / "var/lib/sample")
    lose(root / "usr/share/doc/sample")
    run = audit(root)
    assert run.code == 2
    assert paths(run, "missing") == {
        "/usr/bin/sample",
        "/usr/share/doc/sample/README",
        "/usr/share/doc/sample/copyright",
    }
    assert paths(run, "directory-missing") == {"/usr/share/doc/sample"}
    assert paths(run, "symlink-missing") == {"/usr/lib/sample/current", "/var/lib/sample"}
    said = dpkg_says(root)
    assert {p for p, flags in said.items() if flags == "missing"} >= paths(run, "missing")


def test_a_file_where_a_directory_was_installed_is_the_wrong_type(tmp_path):
    # A package's directories are judged from the walk that resolved its files; anything but a
    # directory there is still looked at and reported.
    root = sample_root(tmp_path)
    lose(root / "usr/share/doc/sample")
    (root / "usr/share/doc/sample").write_bytes(b"not a directory\n")
    run = audit(root)
    wrong = {f["path"]: f["details"] for f in run.findings("debian", "wrong-type")}
    found = wrong["/usr/share/doc/sample"]
    assert (found["found"], found["expected"]) == ("regular file", "directory")
    assert run.check("debian")["stats"]["directories_verified"] > 0


def test_fifo_in_place_of_a_file_does_not_hang(tmp_path):
    root = sample_root(tmp_path)
    replace_with_fifo(root / "usr/bin/sample")
    run = audit(root, timeout=60)
    assert run.code == 2
    (finding,) = run.findings("debian", "wrong-type")
    assert finding["path"] == "/usr/bin/sample"
    assert finding["details"]["found"] == "FIFO"


def test_directory_in_place_of_a_file(tmp_path):
    root = sample_root(tmp_path)
    replace_with_directory(root / "usr/bin/sample")
    flip_byte(root / "usr/share/doc/sample/README")
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("debian", "wrong-type")
    assert finding["details"]["found"] == "directory"
    # The audit goes on past the directory; dpkg --verify stops there with an error.
    assert paths(run, "content-differs") == {"/usr/share/doc/sample/README"}
    peer = verify_with_dpkg(root)
    assert peer.returncode != 0 and "/usr/share/doc/sample/README" not in peer.stdout


def test_symlink_loops_end_as_findings(tmp_path):
    root = sample_root(tmp_path)
    os.unlink(root / "usr/bin/sample")
    os.symlink("sample", root / "usr/bin/sample")
    shutil.rmtree(root / "usr/lib/sample/data")
    os.symlink("data", root / "usr/lib/sample/data")
    run = audit(root, timeout=60)
    assert run.code == 2
    assert paths(run, "wrong-type") == {"/usr/bin/sample", "/usr/lib/sample/data"}
    assert "/usr/lib/sample/data/table" in paths(run, "missing")


def _days_after_install(root, days: float) -> float:
    return os.stat(root / "var/lib/dpkg/info/sample.list").st_mtime + days * 86400


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def test_a_change_made_after_installation_is_a_warning_unless_in_the_window(tmp_path):
    root = sample_root(tmp_path)
    changed_at = _days_after_install(root, 3)
    program = root / "usr/bin/sample"
    program.write_bytes(b"#!/bin/sh\necho updated outside the package manager\n")
    os.utime(program, (changed_at, changed_at))
    flip_byte(root / "usr/lib/sample/data/table")
    run = audit(root)
    assert run.code == 2
    (changed,) = run.findings("debian", "modified-after-install")
    assert (changed["path"], changed["severity"]) == ("/usr/bin/sample", "warning")
    assert changed["details"]["mtime"] == _iso(changed_at)
    assert changed["details"]["installed"] == _iso(_days_after_install(root, 0))
    assert _iso(changed_at) in changed["message"]
    # The lost write kept the packaged mtime, from before the installation: silent damage.
    assert paths(run, "content-differs") == {"/usr/lib/sample/data/table"}
    # Changed during the suspect window: at risk, critical as any other difference.
    day = _iso(changed_at)[:10]
    run = audit(root, "--window", f"{day}..{_iso(changed_at + 86400)[:10]}")
    assert run.findings("debian", "modified-after-install") == []
    (differs,) = [f for f in run.findings("debian", "content-differs") if f["path"] == "/usr/bin/sample"]
    assert differs["severity"] == "critical"
    assert differs["details"]["modified_in_window"] is True


def test_a_machine_whose_only_differences_are_local_changes_reads_warning(tmp_path):
    root = sample_root(tmp_path)
    changed_at = _days_after_install(root, 1)
    for name in ("usr/bin/sample", "usr/lib/sample/data/table"):
        (root / name).write_bytes(b"replaced by a self-updating tool\n")
        os.utime(root / name, (changed_at, changed_at))
    run = audit(root)
    assert run.code == 1, run.stdout
    assert run.check("debian")["status"] == "warning"
    assert paths(run, "modified-after-install") == {"/usr/bin/sample", "/usr/lib/sample/data/table"}


def test_paths_a_tool_removed_after_installation_are_a_warning_and_lost_ones_stay_critical(tmp_path):
    """npm upgrading itself inside the nodejs package removes packaged files and directories: their
    directory changed long after the installation, when no package was installed. A lost directory
    update leaves the directory's time as it was: the path is missing, critical."""
    root = sample_root(tmp_path)
    removed_at = _days_after_install(root, 2)
    os.unlink(root / "usr/bin/sample")
    shutil.rmtree(root / "usr/share/doc/sample")
    for directory in ("usr/bin", "usr/share/doc"):
        os.utime(root / directory, (removed_at, removed_at))
    lose(root / "usr/lib/sample/current")  # the disk lost it: usr/lib/sample keeps its time
    run = audit(root)
    assert run.code == 2, run.stdout
    assert paths(run, "symlink-missing") == {"/usr/lib/sample/current"}
    removed = {f["path"]: f for f in run.findings("debian", "modified-after-install")}
    assert set(removed) == {
        "/usr/bin/sample",
        "/usr/share/doc/sample",
        "/usr/share/doc/sample/README",
        "/usr/share/doc/sample/copyright",
    }
    program = removed["/usr/bin/sample"]
    assert program["severity"] == "warning" and program["details"]["removed"] is True
    assert program["details"]["found"] == "missing"
    assert program["details"]["directory"] == "/usr/bin"
    assert program["details"]["directory_changed"] == _iso(removed_at)
    assert removed["/usr/share/doc/sample"]["details"]["found"] == "directory-missing"
    # Only removals: the machine reads WARNING.
    lost = root / "usr/lib/sample/current"
    os.symlink("data/table", lost)
    os.utime(root / "usr/lib/sample", (0, 0))
    assert audit(root).code == 1
    # Removed during the suspect window: at risk, critical as any other missing file.
    day = _iso(removed_at)[:10]
    run = audit(root, "--window", f"{day}..{_iso(removed_at + 86400)[:10]}")
    assert "/usr/bin/sample" in paths(run, "missing")


def test_a_directory_changed_by_a_later_package_installation_does_not_excuse_a_lost_file(tmp_path):
    """/usr/bin changes with every package installed into it: a packaged file gone from there is
    damage even though the directory changed after its package's installation."""
    root = sample_root(tmp_path)
    debs = tmp_path / "later"
    debs.mkdir()
    install(root, make_deb(debs, "later", files={"/usr/bin/later": b"#!/bin/sh\n"}))
    later = os.stat(root / "var/lib/dpkg/info/later.list").st_mtime
    os.unlink(root / "usr/bin/sample")
    os.utime(root / "usr/bin", (later, later))
    os.utime(root / "var/lib/dpkg/info/sample.list", (later - 86400, later - 86400))
    run = audit(root)
    assert run.code == 2
    assert paths(run, "missing") == {"/usr/bin/sample"}
    assert run.findings("debian", "modified-after-install") == []


def test_conffile_edit_is_a_warning_with_evidence(tmp_path):
    root = sample_root(tmp_path)
    conf = root / "etc/sample.conf"
    conf.write_text("setting = 2\n")
    os.utime(conf, (os.stat(conf).st_atime, os.stat(conf).st_mtime + 3600))
    run = audit(root)
    assert run.code == 1
    (finding,) = run.findings("debian", "conffile-changed")
    assert finding["severity"] == "warning"
    assert finding["details"]["changed_after_install"] is True
    assert dpkg_says(root) == {"/etc/sample.conf": "??5??????"}


def test_conffile_changed_without_a_newer_mtime_says_so(tmp_path):
    root = sample_root(tmp_path)
    flip_byte(root / "etc/sample.conf")
    (finding,) = audit(root).findings("debian", "conffile-changed")
    assert finding["details"]["changed_after_install"] is False
    os.unlink(root / "etc/sample.conf")
    run = audit(root)
    assert run.code == 1
    assert paths(run, "conffile-missing") == {"/etc/sample.conf"}


def test_non_utf8_and_html_file_names(tmp_path):
    odd = b"/usr/share/sample/caf\xe9.txt"
    html = "/usr/share/sample/<script>alert(1)</script>.txt"
    root = sample_root(tmp_path, files={**SAMPLE, odd: b"latin-1 name\n", html: b"html\n"})
    flip_byte(os.fsencode(str(root)) + odd)
    os.unlink(str(root) + html)
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("debian", "content-differs")
    assert finding["path"] == "/usr/share/sample/caf\\xe9.txt"
    import base64

    assert base64.b64decode(finding["details"]["path_b64"]) == odd
    assert paths(run, "missing") == {html}
    text = fsaudit("audit", "--root", root, "--check", "debian")
    assert html in text.stdout


# -- how files are found ---------------------------------------------------------------------------


def test_merged_usr_alias_is_followed_and_hashed_once(tmp_path):
    root = make_root(tmp_path / "root")
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    first = make_deb(tmp_path, "coreutils-ish", files={"/bin/tool": b"tool\n", "/bin/other": b"other\n"})
    second = make_deb(tmp_path, "tool-alias", files={"/usr/bin/tool": b"tool\n"})
    install(root, first, second)
    run = audit(root)
    assert run.code == 0, run.stdout
    stats = run.check("debian")["stats"]
    assert stats["files_verified"] == 3
    assert stats["files_hashed"] == 2
    assert stats["shared_files"] == 1
    flip_byte(root / "usr/bin/tool")
    run = audit(root)
    assert run.code == 2
    assert {(f["path"], f["details"]["package"]) for f in run.findings("debian", "content-differs")} == {
        ("/bin/tool", "coreutils-ish"),
        ("/usr/bin/tool", "tool-alias"),
    }


def test_a_package_of_many_files_is_verified_in_batches_and_every_damage_is_found(tmp_path):
    # Files are hashed a batch at a time, and only those that do not match come back one by one:
    # damage in the first and the last batch, a missing file between them, and a changed conffile
    # are each reported, and every other file is counted as verified.
    root = make_root(tmp_path / "root")
    files = {f"/usr/share/many/f{n:03d}": b"file %d\n" % n for n in range(100)}
    files["/etc/many.conf"] = b"setting = 1\n"
    install(root, make_deb(tmp_path, "many", files=files, conffiles=["/etc/many.conf"]))
    run = audit(root)
    assert run.code == 0, run.stdout
    stats = run.check("debian")["stats"]
    assert (stats["files_verified"], stats["conffiles_verified"], stats["files_hashed"]) == (100, 1, 101)
    assert stats["bytes_hashed"] == sum(len(content) for content in files.values())
    for number in (3, 97):
        flip_byte(root / f"usr/share/many/f{number:03d}")
    os.unlink(root / "usr/share/many/f050")
    (root / "etc/many.conf").write_bytes(b"setting = 2\n")
    run = audit(root)
    assert run.code == 2
    assert paths(run, "content-differs") == {"/usr/share/many/f003", "/usr/share/many/f097"}
    assert paths(run, "missing") == {"/usr/share/many/f050"}
    assert paths(run, "conffile-changed") == {"/etc/many.conf"}
    stats = run.check("debian")["stats"]
    assert (stats["files_verified"], stats["conffiles_verified"], stats["files_hashed"]) == (99, 1, 100)


def test_a_path_listed_twice_in_one_file_list_is_read_once(tmp_path):
    # A damaged (or forged) info/*.list names a file twice: the second entry shares the first one's
    # result, although both are in the same batch of the package's files, and its damage is one
    # finding (one path of one package).
    root = make_root(tmp_path / "root")
    files = {f"/usr/share/twice/f{n:02d}": b"file %d\n" % n for n in range(10)}
    install(root, make_deb(tmp_path, "twice", files=files))
    listing = root / "var/lib/dpkg/info/twice.list"
    listing.write_bytes(listing.read_bytes() + b"/usr/share/twice/f04\n")
    run = audit(root)
    assert run.code == 0, run.stdout
    stats = run.check("debian")["stats"]
    assert (stats["shared_files"], stats["files_hashed"], stats["files_verified"]) == (1, 10, 11)
    flip_byte(root / "usr/share/twice/f04")
    run = audit(root)
    assert [f["path"] for f in run.findings("debian", "content-differs")] == ["/usr/share/twice/f04"]


def test_diverted_file_is_checked_where_it_lives(tmp_path):
    root = make_root(tmp_path / "root")
    original = make_deb(tmp_path, "original", files={"/usr/bin/prog": b"the real program\n"})
    wrapper = make_deb(tmp_path, "wrapper", files={"/usr/bin/prog": b"#!/bin/sh\nexec prog.real\n"})
    install(root, original)
    divert(root, "/usr/bin/prog", "/usr/bin/prog.real", "wrapper")
    install(root, wrapper)
    run = audit(root)
    assert run.code == 0, run.stdout
    flip_byte(root / "usr/bin/prog.real")
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("debian", "content-differs")
    assert finding["path"] == "/usr/bin/prog.real"
    assert finding["details"]["package"] == "original"
    # dpkg --verify checks the original's file at the undiverted path and misses the damage.
    assert "/usr/bin/prog.real" not in dpkg_says(root)


def test_local_diversion_moves_every_package_file(tmp_path):
    root = sample_root(tmp_path)
    divert(root, "/usr/bin/sample", "/usr/bin/sample.distrib")
    run = audit(root)
    assert run.code == 0, run.stdout
    os.unlink(root / "usr/bin/sample.distrib")
    assert paths(audit(root), "missing") == {"/usr/bin/sample.distrib"}


def test_multi_arch_shared_file_is_verified_for_each_owner(tmp_path):
    root = make_root(tmp_path / "root")
    dpkg(root, "--add-architecture", "i386")
    files = {"/usr/share/doc/libshared/README": b"shared\n"}
    debs = [
        make_deb(
            tmp_path,
            "libshared",
            files={**files, f"/usr/lib/{arch}/libshared.so": arch.encode()},
            architecture=arch,
            multi_arch="same",
        )
        for arch in ("amd64", "i386")
    ]
    install(root, *debs)
    assert (root / "var/lib/dpkg/info/libshared:i386.md5sums").exists()
    run = audit(root)
    assert run.code == 0, run.stdout
    assert run.check("debian")["stats"]["shared_files"] == 1
    flip_byte(root / "usr/share/doc/libshared/README")
    run = audit(root)
    findings = run.findings("debian", "content-differs")
    assert {f["details"]["architecture"] for f in findings} == {"amd64", "i386"}
    assert {f["path"] for f in findings} == {"/usr/share/doc/libshared/README"}
    assert any("libshared:i386=1.0-1" in f["advice"] for f in findings)
    # debsums looks for libshared.md5sums, not libshared:amd64.md5sums: it sees nothing wrong.
    debsums = subprocess.run(
        [require_program("debsums", "debsums"), "-a", "-s", f"--root={root}"], capture_output=True, text=True
    )
    assert (debsums.returncode, debsums.stdout) == (0, "")
    assert "/usr/share/doc/libshared/README" in dpkg_says(root)


def test_path_exclude_rules_of_the_root_are_honoured(tmp_path):
    root = make_root(tmp_path / "root")
    rules = ["path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright"]
    (root / "etc/dpkg/dpkg.cfg.d/excludes").write_text("".join(r + "\n" for r in rules))
    deb = make_deb(tmp_path, "sample", files=SAMPLE, conffiles=["/etc/sample.conf"])
    install(root, deb, options=[f"--{r}" for r in rules])
    assert not (root / "usr/share/doc/sample/README").exists()
    run = audit(root)
    assert run.code == 0, run.stdout
    assert run.check("debian")["stats"]["excluded"] == 1
    os.unlink(root / "usr/share/doc/sample/copyright")
    assert paths(audit(root), "missing") == {"/usr/share/doc/sample/copyright"}
    # dpkg --root reads the host's configuration, not the root's: it reports the excluded file.
    assert "/usr/share/doc/sample/README" in dpkg_says(root)


# -- the package database ----------------------------------------------------------------------


def test_truncated_md5sums_is_damage_and_the_rest_is_still_verified(tmp_path):
    root = sample_root(tmp_path)
    md5sums = root / "var/lib/dpkg/info/sample.md5sums"
    lines = md5sums.read_bytes().splitlines(True)
    md5sums.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    cut = "/" + lines[-1][34:].strip().decode()
    other = next(p for p in ("/usr/bin/sample", "/usr/lib/sample/data/table") if p != cut)
    flip_byte(str(root) + other)
    run = audit(root)
    assert run.code == 2
    assert run.codes("debian") == {"database-damaged", "md5sums-incomplete", "content-differs"}
    (incomplete,) = run.findings("debian", "md5sums-incomplete")
    assert incomplete["details"]["sample"] == [cut]
    assert paths(run, "content-differs") == {other}
    assert run.check("debian")["status"] == "critical"


def test_damaged_status_file(tmp_path):
    root = make_root(tmp_path / "root")
    debs = [
        make_deb(tmp_path, name, files={f"/usr/bin/{name}": name.encode()}) for name in ("aaa", "bbb", "ccc")
    ]
    install(root, *debs)
    status = root / "var/lib/dpkg/status"
    text = status.read_bytes()
    # A garbage line inside aaa's entry, and ccc's entry cut off by a truncation.
    text = text.replace(b"Package: aaa\n", b"Package: aaa\n\x00\x00garbage\n", 1)
    text = text[: text.index(b"Package: ccc") + len(b"Package: c")]
    status.write_bytes(text)
    flip_byte(root / "usr/bin/ccc")
    run = audit(root)
    assert run.code == 2
    damage = run.findings("debian", "database-damaged")
    problems = " | ".join(f["message"] for f in damage)
    assert "malformed line" in problems
    assert "info/ccc.list exists" in problems
    (differs,) = run.findings("debian", "content-differs")
    assert differs["details"]["package"] == "ccc"
    assert run.check("debian")["stats"]["files_verified"] == 3


def test_journal_in_updates_is_applied(tmp_path):
    root = sample_root(tmp_path)
    status = root / "var/lib/dpkg/status"
    entry = status.read_text().replace("Version: 1.0-1", "Version: 1.0-2")
    (root / "var/lib/dpkg/updates/0001").write_text(entry)
    status.write_text("")
    os.unlink(root / "usr/bin/sample")
    (finding,) = audit(root).findings("debian", "missing")
    assert finding["subject"] == "sample 1.0-2"


def test_package_without_md5sums_and_hashes_from_cache(tmp_path):
    # dpkg writes md5sums itself for a package that ships none, so remove them as an old or
    # damaged installation would have lost them.
    root = sample_root(tmp_path, md5sums=False)
    os.unlink(root / "var/lib/dpkg/info/sample.md5sums")
    run = audit(root)
    assert run.code == 3
    assert run.codes("debian") == {"no-md5sums"}
    assert run.check("debian")["stats"]["files_unverified"] == 4
    flip_byte(root / "usr/bin/sample")
    deb = next((tmp_path / "debs").glob("*.deb"))
    assert audit(root, "--set", "debian.hashes_from_cache=true").code == 3
    shutil.copy(deb, root / "var/cache/apt/archives")
    run = audit(root, "--set", "debian.hashes_from_cache=true")
    assert run.code == 2
    assert run.codes("debian") == {"content-differs"}
    assert run.check("debian")["stats"]["packages_hashed_from_cache"] == 1


def test_older_version_in_the_apt_cache_shows_a_lost_update(tmp_path):
    root = make_root(tmp_path / "root")
    old = make_deb(
        tmp_path,
        "sample",
        "1:1.0-1",
        files={**SAMPLE, "/usr/bin/sample": b"old program\n"},
        conffiles=["/etc/sample.conf"],
        compression="gzip",
    )
    new = make_deb(
        tmp_path, "sample", "1:2.0-1", files=SAMPLE, conffiles=["/etc/sample.conf"], compression="zstd"
    )
    install(root, old)
    install(root, new)
    for deb in (old, new):
        shutil.copy(deb, root / "var/cache/apt/archives")
    target = root / "usr/bin/sample"
    with kept_times(target):
        target.write_bytes(b"old program\n")
    run = audit(root)
    assert run.code == 2
    (finding,) = run.findings("debian", "content-differs")
    assert finding["details"]["classification"] == "older-version"
    assert finding["details"]["matches_version"] == "1:1.0-1"
    assert "1:1.0-1" in finding["message"]


def test_unsettled_package_is_a_warning(tmp_path):
    root = sample_root(tmp_path)
    status = root / "var/lib/dpkg/status"
    status.write_text(status.read_text().replace("install ok installed", "install ok half-configured"))
    run = audit(root)
    assert run.code == 1
    assert run.codes("debian") == {"package-unsettled"}


def audit_without_read_override(root):
    """Audit as root but without the capabilities that let root read any file (a mode 000 file
    is then unreadable, as for any user); as another user, plainly."""
    command = [sys.executable, "-m", "fsaudit", "audit", "--root", str(root), "--check", "debian"]
    command += ["--format", "json"]
    if os.geteuid() == 0:
        command = [
            require_program("setpriv", "util-linux"),
            "--bounding-set=-dac_override,-dac_read_search",
        ] + command
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120
    )
    return Run(completed)


def test_a_file_this_user_may_not_read_is_not_damage_but_not_checked(tmp_path):
    root = sample_root(tmp_path)
    os.chmod(root / "usr/bin/sample", 0)
    os.chmod(root / "usr/lib/sample/data", 0)
    run = audit_without_read_override(root)
    assert run.code == 3, run.stdout + run.stderr
    assert run.findings("debian") == []
    check = run.check("debian")
    # The file, and the file inside a directory that cannot be searched.
    assert check["stats"]["not_checked_permission"] == 2
    assert check["stats"]["unreadable"] == 0
    assert check["status"] == "unknown"
    assert "2 files not checked: permission denied (run as root to check them)" in check["reason"]


def test_finds_what_dpkg_verify_finds(tmp_path):
    root = sample_root(tmp_path)
    flip_byte(root / "usr/bin/sample", 100)
    truncate(root / "usr/lib/sample/data/table", 2)
    os.unlink(root / "usr/share/doc/sample/README")
    (root / "etc/sample.conf").write_text("edited\n")
    run = audit(root)
    assert run.code == 2
    ours = {f["path"] for f in run.findings("debian")}
    assert (
        ours
        == set(dpkg_says(root))
        == {
            "/usr/bin/sample",
            "/usr/lib/sample/data/table",
            "/usr/share/doc/sample/README",
            "/etc/sample.conf",
        }
    )
