"""`git`: real repositories; silent damage, edits, missing files, object damage; nothing written."""

import os
import subprocess

import pytest

from fixtures.apps import git, make_repo
from fixtures.corrupt import flip_byte
from tests.conftest import fsaudit, require_program

FILES = {
    "app/main.py": b"print('hello')\n" * 100,
    "app/config.json": b'{"debug": false}\n',
    "README": b"the app\n",
    "static/logo.txt": b"logo" * 500,
}


@pytest.fixture
def repo(tmp_path):
    require_program("git", "git")
    tree = make_repo(tmp_path / "srv" / "site", FILES)
    os.symlink("app/main.py", tree / "entry")
    git(tree, "add", "entry")
    git(tree, "commit", "-q", "-m", "link")
    return tree


def audit(tree, *extra):
    return fsaudit("audit", "--check", "git", "--set", f"git.paths={tree.parent}", "--format", "json", *extra)


def test_clean_repository_is_ok(repo):
    run = audit(repo)
    assert run.code == 0, run.stdout
    assert run.check("git")["stats"]["repositories"] == 1
    assert run.check("git")["stats"]["files_verified"] == 5


def test_silent_change_edit_and_missing_file(repo):
    flip_byte(repo / "app" / "main.py", 7)  # size and mtime as git recorded them
    (repo / "README").write_bytes(b"edited by someone\n")  # a normal edit: new mtime
    os.unlink(repo / "static" / "logo.txt")
    run = audit(repo)
    assert run.code == 2
    by_path = {f["path"].split("/site/", 1)[1]: f for f in run.findings("git")}
    assert by_path["app/main.py"]["code"] == "content-differs"
    assert by_path["app/main.py"]["severity"] == "critical"
    assert by_path["README"]["code"] == "modified"
    assert by_path["README"]["severity"] == "warning"
    assert by_path["static/logo.txt"]["code"] == "missing"


def test_damaged_object_is_found_by_fsck(repo):
    blob = git(repo, "rev-parse", "HEAD:app/config.json").strip()
    path = repo / ".git" / "objects" / blob[:2] / blob[2:]
    os.chmod(path, 0o644)
    flip_byte(path, -3)
    run = audit(repo)
    assert run.code == 2
    assert "object-damaged" in run.codes("git")


def test_damaged_index_is_reported(repo):
    flip_byte(repo / ".git" / "index", 20)
    run = audit(repo)
    assert "index-damaged" in run.codes("git")
    assert run.code == 2


def test_nothing_in_the_repository_is_written(repo):
    # Make git's stat cache stale: a plain `git status` would now rewrite the index.
    os.utime(repo / "README", (1_000_000_000, 1_000_000_000))
    index = repo / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns, sorted(os.listdir(repo / ".git")))
    audit(repo)
    assert (index.read_bytes(), index.stat().st_mtime_ns, sorted(os.listdir(repo / ".git"))) == before


def test_files_git_converts_on_checkout_are_not_called_damaged(repo):
    (repo / ".gitattributes").write_bytes(b"*.txt eol=crlf\n")
    (repo / "notes.txt").write_bytes(b"one\ntwo\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "crlf")
    os.unlink(repo / "notes.txt")
    git(repo, "checkout", "--", "notes.txt")
    assert (repo / "notes.txt").read_bytes() == b"one\r\ntwo\r\n"
    subprocess.run(["git", "-C", str(repo), "status"], check=True, capture_output=True)
    run = audit(repo)
    assert run.code == 0, run.stdout
    assert run.check("git")["stats"].get("files_unverified") == 1
