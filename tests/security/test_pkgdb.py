"""Hostile package databases (pacman, portage, apk, nix): a tenant who is root in the VM writes the
database the audit trusts for its expectations. Paths that climb out of the root, links to host
files, impossible values, endless lines and decompression bombs must be reported as database damage,
must never make fsaudit read a file of this host, and must cost bounded time and memory."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from fixtures import apk as alpine
from fixtures import nix as nixfix
from fixtures import pacman as pacfix
from fixtures import portage as gentoo
from tests.conftest import fsaudit_measured, require_program

MAX_RSS = 400 << 20


@pytest.fixture
def secret():
    """A file of this host that no audit of an image may read: its digests must never appear."""
    directory = Path(tempfile.mkdtemp(prefix="fsaudit-host-secret-"))
    path = directory / "secret"
    data = os.urandom(64)
    path.write_bytes(data)
    digests = {hashlib.new(name, data).hexdigest() for name in ("md5", "sha1", "sha256")}
    yield path, digests
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def base():
    directory = Path(tempfile.mkdtemp(prefix="fsaudit-pkgdb-", dir="/tmp"))
    yield directory
    subprocess.run(["chmod", "-R", "u+w", str(directory)], check=True)
    shutil.rmtree(directory, ignore_errors=True)


def climb(path: Path) -> str:
    """A path that climbs from anywhere to `path` on this host."""
    return "/.." * 40 + str(path)


def assert_host_file_not_read(run, secret) -> None:
    path, digests = secret
    for digest in digests:
        assert digest not in run.stdout
    assert str(path) not in {f.get("path") for check in run.report["checks"] for f in check["findings"]}


def audit_measured(root: Path, check: str):
    """The audit's Run, its peak memory bounded (measured for the audit alone: fixtures/measured.py)."""
    run, cost = fsaudit_measured("audit", "--root", root, "--check", check, "--format", "json")
    assert cost.max_rss < MAX_RSS, f"fsaudit peaked at {cost.max_rss >> 20} MiB"
    return run


def test_hostile_pacman_database(base, secret):
    require_program("pacman", "pacman-package-manager")
    require_program("bsdtar", "libarchive-tools")
    root = pacfix.make_root(base / "root")
    package = pacfix.build_package(
        base, "demo", "1.0-1", {"/usr/bin/demo": "demo\n", "/usr/bin/tool": "tool\n"}
    )
    pacfix.install(root, [package])
    local = root / "var/lib/pacman/local/demo-1.0-1"
    digest = hashlib.sha256(secret[0].read_bytes()).hexdigest()
    mtree = gzip.decompress((local / "mtree").read_bytes())
    mtree += (
        f".{climb(secret[0])} type=file size=64 sha256digest={digest}\n"
        "./usr/bin/huge type=file size=99999999999999999999999 sha256digest=" + "0" * 64 + "\n"
        "./usr/bin/weird type=file mode=99999 sha256digest=zz\n"
        "./usr/bin/link type=link\n"
    ).encode()
    (local / "mtree").write_bytes(gzip.compress(mtree))
    # A packaged file replaced by a link to the host file: a link is never followed to read it.
    os.unlink(root / "usr/bin/tool")
    os.symlink(secret[0], root / "usr/bin/tool")
    # Another package whose mtree is a decompression bomb and whose desc names a path.
    bomb = root / "var/lib/pacman/local/bomb-1.0-1"
    bomb.mkdir()
    (bomb / "desc").write_text("%NAME%\n../../../etc\n\n%VERSION%\n1.0-1\n")
    (bomb / "files").write_text("%FILES%\n" + "../" * 20 + "etc/shadow\n")
    with gzip.open(bomb / "mtree", "wb", compresslevel=1) as out:
        zeros = bytes(1 << 20)
        for _ in range(300):
            out.write(zeros)
    run = audit_measured(root, "pacman")
    assert run.code == 2, run.stdout + run.stderr
    findings = run.findings("pacman")
    problems = [f["details"]["problem"] for f in findings if f["code"] == "database-damaged"]
    assert any("'..'" in p for p in problems)
    assert any("larger than" in p for p in problems)
    assert any("impossible path" in p for p in problems)
    assert {f["path"]: f["code"] for f in findings if f["code"] != "database-damaged"} == {
        "/usr/bin/tool": "wrong-type"
    }
    # Named after its directory, not after the path its desc gave.
    bomb_findings = [f for f in findings if f["details"].get("package") == "bomb"]
    assert bomb_findings and all(f["details"]["version"] == "1.0-1" for f in bomb_findings)
    assert_host_file_not_read(run, secret)


def test_hostile_portage_database(base, secret):
    root = gentoo.make_root(base / "root")
    gentoo.install(root, "app-misc", "demo-1.0", {"/usr/bin/demo": "demo\n", "/usr/bin/tool": "tool\n"})
    contents = root / "var/db/pkg/app-misc/demo-1.0/CONTENTS"
    md5 = hashlib.md5(secret[0].read_bytes()).hexdigest()
    with open(contents, "ab") as out:
        out.write(f"obj {climb(secret[0])} {md5} 1\n".encode())
        out.write(b"obj relative/path " + b"0" * 32 + b" 1\n")
        out.write(b"sym /usr/bin/x -> " + b"A" * 70000 + b" 1\n")
        out.write(b"obj /usr/bin/endless " + b"B" * (20 << 20))  # one 20 MiB line, no newline
    os.unlink(root / "usr/bin/tool")
    os.symlink(secret[0], root / "usr/bin/tool")
    # A category and a package directory whose names are not names.
    (root / "var/db/pkg/..evil").mkdir()
    run = audit_measured(root, "portage")
    assert run.code == 2, run.stdout + run.stderr
    findings = run.findings("portage")
    damage = [f for f in findings if f["code"] == "database-damaged"]
    assert len(damage) == 4
    assert {f["path"]: f["code"] for f in findings if f["code"] != "database-damaged"} == {
        "/usr/bin/tool": "wrong-type"
    }
    assert_host_file_not_read(run, secret)


def test_hostile_apk_database(base, secret):
    root = alpine.make_root(base / "root")
    alpine.install(root, "demo", "1.0-r0", {"/usr/bin/demo": "demo\n", "/usr/bin/tool": "tool\n"})
    sha1 = alpine.q1(secret[0].read_bytes())
    hostile = (
        "P:evil\nV:1.0-r0\nt:1\n"
        f"F:{climb(secret[0].parent).lstrip('/')}\nR:{secret[0].name}\nZ:{sha1}\n"
        "F:usr/bin\nR:../../../etc/shadow\nZ:Q1AAAA\nR:ok\na:0:0:99999999\n"
        "M:not:an:acl\nZ:X1zz\n"
    )
    with open(root / alpine.INSTALLED, "a") as out:
        out.write(hostile)
        out.write("F:" + "C" * (1 << 20) + "\n\n")  # a line longer than any path
        out.write("P:\xff\x1b]0;title\x07\nV:1\nF:usr\n\n")
    os.unlink(root / "usr/bin/tool")
    os.symlink(secret[0], root / "usr/bin/tool")
    run = audit_measured(root, "apk")
    assert run.code == 2, run.stdout + run.stderr
    findings = run.findings("apk")
    damage = [f for f in findings if f["code"] == "database-damaged"]
    assert len(damage) >= 6
    others = {f["path"]: f["code"] for f in findings if f["code"] != "database-damaged"}
    assert others.get("/usr/bin/tool") == "link-differs"  # apk's digest covers a link's target
    assert_host_file_not_read(run, secret)


def test_hostile_nix_database(base, secret):
    require_program("nix-store", "nix-bin")
    root = base / "root"
    (base / "src").mkdir()
    (base / "src/file").write_text("content\n")
    (store_path,) = nixfix.add(root, [base / "src/file"])
    database = root / "nix/var/nix/db/db.sqlite"
    real = hashlib.sha256(nixfix.dump(secret[0], root)).hexdigest()
    link_path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-link"
    os.symlink(secret[0], root / link_path.lstrip("/"))
    os.utime(root / link_path.lstrip("/"), (1, 1), follow_symlinks=False)  # as nix leaves it
    rows = [
        ("/nix/store/" + "../" * 10 + str(secret[0]).lstrip("/"), f"sha256:{real}", 1, None, 1),
        (str(secret[0]), f"sha256:{real}", 1, None, 1),
        ("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-badhash", "sha256:zzz", 1, None, 1),
        ("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-badsize", "sha256:" + "0" * 64, 1, None, -5),
        (link_path, f"sha256:{real}", 1, "\x1b]0;owned\x07", 120),
    ]
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany(
            "INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    run = audit_measured(root, "nix")
    assert run.code == 2, run.stdout + run.stderr
    findings = run.findings("nix")
    assert len([f for f in findings if f["code"] == "database-damaged"]) == 4
    # The link is archived as a link: its NAR differs from the host file's, which is never read.
    assert {f["path"]: f["code"] for f in findings if f["code"] != "database-damaged"} == {
        link_path: "content-differs"
    }
    assert store_path
    assert_host_file_not_read(run, secret)
    # A database file that is no database at all.
    database.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    run = audit_measured(root, "nix")
    assert run.code == 2
    (finding,) = run.findings("nix")
    assert finding["code"] == "database-damaged"
    assert "no store path was verified" in run.check("nix")["reason"]
