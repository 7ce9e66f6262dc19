"""The nix checker against real Nix stores made by Debian's nix-bin in a temporary root, compared with
`nix-store --verify --check-contents` on the same damage."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from fixtures import nix as nixfix
from fixtures.corrupt import flip_byte, kept_times, replace_with_fifo, truncate
from tests.conftest import fsaudit, require_program

HOSTILE = os.fsdecode(b"caf\xe9 \x1b[31m\nred")
SMALL = 60


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    require_program("nix-store", "nix-bin")
    base = Path(tempfile.mkdtemp(prefix="fsaudit-nix-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        work = base / "work"
        (work / "tree/bin").mkdir(parents=True)
        (work / "tree/bin/hello").write_text("#!/bin/sh\necho hello\n" * 30)
        os.chmod(work / "tree/bin/hello", 0o755)
        (work / "tree/share").mkdir()
        (work / "tree/share/data").write_bytes(bytes(range(256)) * 40)
        os.symlink("../bin/hello", work / "tree/share/hello-link")
        (work / "tree" / HOSTILE).write_text("hostile name\n")
        (work / "small").mkdir()
        for i in range(SMALL):
            (work / "small" / f"file{i:03}").write_text(f"small file {i}\n" * 10)
        root = base / "root"
        paths = {"tree": nixfix.add(root, [work / "tree"])[0]}
        paths["small"] = nixfix.add(root, sorted((work / "small").iterdir()))
        paths["built"] = nixfix.build(root, work / "build", "payload-1.0", "payload\n" * 100)
        yield root, paths
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def store(pristine):
    """A copy of the pristine store to damage, where unprivileged users may look too."""
    root, paths = pristine
    base = Path(tempfile.mkdtemp(prefix="fsaudit-nix-copy-", dir="/tmp"))
    os.chmod(base, 0o755)
    copy = base / "root"
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True)
    yield copy, paths
    subprocess.run(["chmod", "-R", "u+w", str(base)], check=True)
    shutil.rmtree(base, ignore_errors=True)


def audit(root, *args):
    return fsaudit("audit", "--root", root, "--check", "nix", "--format", "json", *args)


def by_path(run) -> dict:
    return {f["path"]: f for f in run.findings("nix")}


def db_dir_snapshot(root: Path) -> dict:
    directory = root / "nix/var/nix/db"
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_clean_store_is_ok_and_agrees_with_nix(store, tmp_path):
    root, paths = store
    before = db_dir_snapshot(root)
    run = audit(root)
    assert run.code == 0, run.stdout + run.stderr
    check = run.check("nix")
    assert check["findings"] == []
    total = 1 + SMALL + 3  # the tree, the small files, the built output, its .drv and its source
    assert check["stats"]["store_paths"] == check["stats"]["store_paths_verified"] == total
    assert check["stats"]["unregistered_paths"] == 0
    assert db_dir_snapshot(root) == before  # no -wal, no -shm, nothing touched
    assert nixfix.verify(root, tmp_path) == {}


def test_damage_is_found_like_nix_store_verify(store, tmp_path):
    root, paths = store
    tree = nixfix.writable(root, paths["tree"])
    flip_byte(tree / "share/data", 10)  # mtime stays nix's canonical 1: silent damage
    with kept_times(tree / "bin/hello"):
        replace_with_fifo(tree / "bin/hello")
    built = nixfix.writable(root, paths["built"])
    truncate(built, 10)
    gone = nixfix.writable(root, paths["small"][3])
    os.unlink(gone)
    ghost = root / "nix/store/0123456789abcdfghijklmnpqrsvwxyz-ghost-1.0"
    ghost.mkdir()
    run = audit(root)
    assert run.code == 2, run.stdout + run.stderr
    codes = {path: f["code"] for path, f in by_path(run).items()}
    assert codes == {
        paths["tree"] + "/bin/hello": "wrong-type",
        paths["built"]: "content-differs",
        paths["small"][3]: "missing",
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-ghost-1.0": "unregistered-path",
    }
    # nix reports the same store paths (the FIFO as an unsupported file, the deleted path as gone).
    assert nixfix.verify(root, tmp_path) == {
        paths["tree"] + "/bin/hello": "unsupported type",
        paths["built"]: "modified",
        paths["small"][3]: "disappeared",
    }
    built_finding = by_path(run)[paths["built"]]["details"]
    assert built_finding["deriver"].endswith("-payload-1.0.drv")
    assert built_finding["package"] == "payload" and built_finding["version"] == "1.0"
    assert built_finding["size_differs"] is True
    # Without the FIFO the flipped byte in the same store path is found by its hash.
    os.unlink(tree / "bin/hello")
    (tree / "bin/hello").write_text("#!/bin/sh\necho hello\n" * 30)
    os.chmod(tree / "bin/hello", 0o555)
    for path in (tree / "bin/hello", tree / "bin"):
        os.utime(path, (1, 1))  # as nix left them
    finding = by_path(audit(root))[paths["tree"]]
    assert finding["code"] == "content-differs" and finding["severity"] == "critical"
    assert "written_files" not in finding["details"]


def test_a_file_written_after_registration_is_a_warning_unless_in_the_window(store):
    root, paths = store
    tree = nixfix.writable(root, paths["tree"])
    (tree / "share/data").write_text("replaced by hand\n")
    with closing(sqlite3.connect(f"file:{root}/nix/var/nix/db/db.sqlite?immutable=1", uri=True)) as db:
        (registered,) = db.execute(
            "SELECT registrationTime FROM ValidPaths WHERE path = ?", (paths["tree"],)
        ).fetchone()
    os.utime(tree / "share/data", (registered + 3600, registered + 3600))  # an hour after registration
    run = audit(root)
    assert run.code == 1, run.stdout
    finding = by_path(run)[paths["tree"]]
    assert finding["code"] == "modified-after-install"
    assert finding["details"]["written_files"] == [paths["tree"] + "/share/data"]
    run = audit(root, "--window", "2000-01-01..2100-01-01")
    assert run.code == 2
    assert by_path(run)[paths["tree"]]["details"]["modified_in_window"] is True


def _leaf_page(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?immutable=1", uri=True)) as connection:
        pages = [
            row[0]
            for row in connection.execute(
                "SELECT pageno FROM dbstat WHERE name = 'ValidPaths' AND pagetype = 'leaf' ORDER BY pageno"
            )
        ]
    assert len(pages) >= 3, pages
    return pages[len(pages) // 2]


def test_a_damaged_database_page_is_reported_and_the_rest_is_verified(store):
    root, paths = store
    database = root / "nix/var/nix/db/db.sqlite"
    page = _leaf_page(database)
    with kept_times(database), open(database, "r+b") as handle:
        handle.seek((page - 1) * 4096)
        handle.write(b"\xa5" * 4096)
    built = nixfix.writable(root, paths["built"])
    flip_byte(built, 0)
    run = audit(root)
    assert run.code == 2, run.stdout
    damaged = run.findings("nix", "database-damaged")
    assert damaged and all(f["path"] == "/nix/var/nix/db/db.sqlite" for f in damaged)
    stats = run.check("nix")["stats"]
    assert 0 < stats["store_paths_verified"] < 1 + SMALL + 3
    assert by_path(run)[paths["built"]]["code"] == "content-differs"


def test_transactions_still_in_the_write_ahead_log_are_read(store):
    """nix runs sqlite in WAL mode: rows not yet checkpointed are only in db.sqlite-wal."""
    root, paths = store
    database = root / "nix/var/nix/db/db.sqlite"
    staging = root.parent / "staging"
    staging.mkdir()
    shutil.copy(database, staging / "db.sqlite")
    ghost = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-late-1.0"
    (root / ghost.lstrip("/")).mkdir()
    os.utime(root / ghost.lstrip("/"), (1, 1))
    with closing(sqlite3.connect(staging / "db.sqlite")) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA wal_autocheckpoint=0")
        with connection:
            connection.execute(
                "INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?, ?, ?, ?)",
                (ghost, "sha256:" + "0" * 64, 1700000000, 96),
            )
        shutil.copy(staging / "db.sqlite-wal", root / "nix/var/nix/db/db.sqlite-wal")
    assert (root / "nix/var/nix/db/db.sqlite-wal").stat().st_size > 0
    before = db_dir_snapshot(root)
    run = audit(root)
    assert db_dir_snapshot(root) == before
    check = run.check("nix")
    assert check["stats"]["database_copied"] is True
    # The late row is seen: the directory is registered, and its (made-up) hash is wrong.
    assert by_path(run)[ghost]["code"] == "content-differs"
    assert check["stats"]["unregistered_paths"] == 0


def test_hostile_names_inside_a_store_path(store):
    root, paths = store
    tree = nixfix.writable(root, paths["tree"])
    hostile = tree / HOSTILE
    with kept_times(hostile):
        os.unlink(hostile)
        os.mkfifo(hostile)
    run = audit(root)
    assert run.code == 2
    finding = run.findings("nix", "wrong-type")[0]
    assert base64.b64decode(finding["details"]["path_b64"]) == os.fsencode(paths["tree"] + "/" + HOSTILE)
    assert finding["subject"] == os.path.basename(paths["tree"])


def test_advice_names_the_image_and_the_repair_command(store):
    root, paths = store
    built = nixfix.writable(root, paths["built"])
    flip_byte(built, 0)
    advice = by_path(audit(root))[paths["built"]]["advice"]
    assert "inside the VM" in advice and str(root) in advice
    assert f"nix-store --repair-path {paths['built']}" in advice


def test_files_that_cannot_be_read_without_root_are_not_damage(store):
    root, paths = store
    tree = nixfix.writable(root, paths["tree"])
    with kept_times(tree / "share/data"):
        os.chmod(tree / "share/data", 0o400)
    run = fsaudit("audit", "--root", root, "--check", "nix", "--format", "json", user="nobody")
    assert run.code == 3, run.stdout + run.stderr
    check = run.check("nix")
    assert check["findings"] == []
    assert check["stats"]["not_checked_permission"] == 1
    assert "permission denied" in check["reason"]
