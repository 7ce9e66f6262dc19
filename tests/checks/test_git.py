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


def test_linked_work_trees_share_one_fsck_and_are_each_compared(repo, tmp_path):
    git(repo, "worktree", "add", "-q", str(repo.parent / "site-linked"), "-b", "linked")
    linked = repo.parent / "site-linked"
    flip_byte(linked / "app" / "main.py", 7)
    run = audit(repo)
    stats = run.check("git")["stats"]
    assert stats["repositories"] == 2
    assert stats["repositories_fsck_clean"] == 1  # one repository, two work trees
    assert {(f["code"], f["path"]) for f in run.findings("git")} == {
        ("content-differs", str(linked / "app" / "main.py"))
    }
    assert run.code == 2


def test_a_linked_work_trees_objects_count_as_reachable(repo):
    linked = repo.parent / "site-linked"
    git(repo, "worktree", "add", "-q", str(linked), "-b", "linked")
    (linked / "only-here.txt").write_bytes(b"staged in the linked tree only\n")
    git(linked, "add", "only-here.txt")
    blob = git(linked, "rev-parse", ":only-here.txt").strip()
    os.unlink(repo / ".git" / "objects" / blob[:2] / blob[2:])
    run = audit(repo)
    damaged = run.findings("git", "object-damaged")
    assert damaged and blob in " ".join(damaged[0]["details"]["fsck"])


def test_sha256_repository(tmp_path):
    require_program("git", "git")
    tree = tmp_path / "srv" / "site"
    tree.mkdir(parents=True)
    git(tree, "init", "-q", "--object-format=sha256")
    for name, data in FILES.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "initial")
    run = audit(tree)
    assert run.code == 0, run.stdout
    assert run.check("git")["stats"]["files_verified"] == len(FILES)
    flip_byte(tree / "README", 2)
    assert audit(tree).codes("git") == {"content-differs"}


def test_a_partial_clone_is_not_damaged_by_the_objects_it_never_fetched(repo, tmp_path):
    clone = tmp_path / "srv" / "clone"
    subprocess.run(
        [
            "git",
            "-c",
            "protocol.file.allow=always",
            "clone",
            "-q",
            "--filter=blob:none",
            "--no-checkout",
            f"file://{repo}",
            str(clone),
        ],
        check=True,
        capture_output=True,
    )
    git(clone, "-c", "protocol.file.allow=always", "checkout", "-q", "HEAD", "--", "README")
    run = audit(clone)
    stats = run.check("git")["stats"]
    assert stats["repositories_fsck_clean"] == 2, run.stdout  # the clone and its origin
    assert run.code == 0, run.stdout


def test_damaged_head_and_config_are_reported(repo):
    (repo / ".git" / "HEAD").write_bytes(b"\0\0\0\0garbage")
    with open(repo / ".git" / "config", "ab") as config:
        config.write(b"[core\n\0\0\0")
    run = audit(repo)
    assert run.codes("git") == {"repository-damaged"}
    assert len(run.findings("git")) == 2
    assert run.code == 2


def test_permission_denied_is_not_damage():
    import shutil
    import tempfile
    from pathlib import Path

    require_program("git", "git")
    base = Path(tempfile.mkdtemp(prefix="fsaudit-git-", dir="/tmp"))
    try:
        tree = make_repo(base / "site", FILES)
        for path in [base, *base.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(tree / "README", 0o600)  # root's: nobody may not read it
        run = fsaudit(
            "audit", "--check", "git", "--set", f"git.paths={base}", "--format", "json", user="nobody"
        )
        check = run.check("git")
        assert check["findings"] == [], check
        assert check["stats"]["not_checked_permission"] == 1
        assert check["status"] == "unknown"
        assert run.code == 3
    finally:
        shutil.rmtree(base, ignore_errors=True)
