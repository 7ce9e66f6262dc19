"""git over hostile repositories: no repository may make git run a program, fetch, or read a file of
the auditing machine into the report (issue 13, items 2 and 3).

Every repository below is real: built with git, then given the config or the files an attacker would
plant. One audit reads them all (and a second one without fsck); each test asserts for its own
repository that its marker file was not created, that the secret is in no output, and that the
repository was still checked (a finding, or its files verified).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest

from fixtures.apps import git, make_repo
from fixtures.corrupt import flip_byte
from tests.conftest import fsaudit, require_program

FILES = {
    ".gitattributes": b"*.txt text\n",
    "app/main.py": b"print('hello')\n" * 50,
    "notes.txt": b"one\ntwo\n",
}
HOOKS = [
    "applypatch-msg",
    "pre-applypatch",
    "post-applypatch",
    "pre-commit",
    "pre-merge-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-rebase",
    "post-checkout",
    "post-merge",
    "pre-push",
    "pre-receive",
    "update",
    "proc-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
    "pre-auto-gc",
    "post-rewrite",
    "sendemail-validate",
    "fsmonitor-watchman",
    "p4-changelist",
    "p4-prepare-changelist",
    "p4-post-changelist",
    "p4-pre-submit",
    "post-index-change",
]


class Lab:
    """Paths shared by the hostile repositories: the secret, the markers, helper programs."""

    def __init__(self, base: Path):
        self.base = base
        self.repos = base / "srv"
        self.secret = "SECRET-" + secrets.token_hex(8)
        self.secret_file = base / "host" / "shadow"
        self.secret_file.parent.mkdir()
        # Shaped like the lines git would quote: an object name, a ref line, a config line.
        self.secret_file.write_text(
            f"{self.secret}:$6$salt$hash:19000:0:99999:7:::\n[x]\n\ty = {self.secret}\n"
        )
        self.markers = base / "markers"
        self.markers.mkdir()

    def marker(self, name: str) -> Path:
        return self.markers / f"PWNED-{name}"

    def program(self, name: str) -> Path:
        """An executable that creates the marker of `name`."""
        path = self.base / "host" / f"evil-{name}"
        path.write_text(f"#!/bin/sh\ntouch {self.marker(name)}\nexit 1\n")
        path.chmod(0o755)
        return path


def _config(tree: Path, *pairs: str) -> None:
    for key, value in zip(pairs[::2], pairs[1::2]):
        subprocess.run(
            ["git", "config", "--file", str(tree / ".git" / "config"), "--add", key, value], check=True
        )


def _drop_object(tree: Path, spec: str) -> None:
    blob = git(tree, "rev-parse", spec).strip()
    os.unlink(tree / ".git" / "objects" / blob[:2] / blob[2:])


def _lazy_fetch_bait(tree: Path) -> None:
    """A partial clone whose `.gitattributes` blob is gone and a file that differs from its blob:
    asking git for that file's attributes makes a careless git fetch the blob from the remote."""
    flip_byte(tree / "notes.txt", 1)
    _drop_object(tree, "HEAD:.gitattributes")
    os.unlink(tree / ".gitattributes")
    _config(tree, "core.repositoryformatversion", "1", "extensions.partialClone", "origin")


def build_exec(lab: Lab, name: str) -> Path:
    """A repository whose config tries to make git run the marker program `name`."""
    tree = make_repo(lab.repos / name, FILES)
    touch = f"touch {lab.marker(name)}"
    evil = str(lab.program(name))
    if name == "fsmonitor":
        _config(tree, "core.fsmonitor", evil, "core.fsmonitorHookVersion", "2")
        flip_byte(tree / "notes.txt", 1)
    elif name == "hooks":
        hooks = tree / ".git" / "hooks"
        for hook in HOOKS:
            (hooks / hook).write_text(f"#!/bin/sh\n{touch}\n")
            (hooks / hook).chmod(0o755)
        _config(tree, "core.hooksPath", str(hooks))
        flip_byte(tree / "notes.txt", 1)
    elif name == "lazy-fetch-ssh":
        _lazy_fetch_bait(tree)
        _config(tree, "remote.origin.url", "ssh://example.invalid/x", "remote.origin.promisor", "true")
        _config(tree, "core.sshCommand", f"{touch}; false", "ssh.variant", "ssh")
    elif name == "lazy-fetch-upload-pack":
        _lazy_fetch_bait(tree)
        origin = make_repo(lab.base / "origin-upload-pack", FILES)
        _config(tree, "remote.origin.url", str(origin), "remote.origin.promisor", "true")
        _config(tree, "remote.origin.uploadpack", f"{touch}; git-upload-pack", "protocol.allow", "always")
    elif name == "lazy-fetch-ext":
        _lazy_fetch_bait(tree)
        _config(
            tree,
            "remote.origin.url",
            f"ext::sh -c touch% {lab.marker(name)}",
            "remote.origin.promisor",
            "true",
        )
        _config(tree, "protocol.ext.allow", "always", "protocol.allow", "always")
    elif name == "lazy-fetch-proxy":
        _lazy_fetch_bait(tree)
        _config(tree, "remote.origin.url", "git://127.0.0.1:9/x", "remote.origin.promisor", "true")
        _config(tree, "core.gitProxy", evil)
    elif name == "lazy-fetch-credentials":
        _lazy_fetch_bait(tree)
        _config(tree, "remote.origin.url", "http://127.0.0.1:9/x", "remote.origin.promisor", "true")
        _config(
            tree, "credential.helper", f"!{touch}", "core.askPass", evil, "http.proxy", "http://127.0.0.1:9"
        )
    elif name == "lazy-fetch-insteadof":
        _lazy_fetch_bait(tree)
        _config(tree, "remote.origin.url", "https://example.invalid/x", "remote.origin.promisor", "true")
        _config(tree, f"url.ext::sh -c touch% {lab.marker(name)}#.insteadOf", "https://example.invalid/")
        _config(tree, "protocol.allow", "always")
    elif name == "include":
        included = lab.base / "host" / "included.config"
        included.write_text(
            f"[core]\n\tsshCommand = {touch}; false\n\tfsmonitor = {evil}\n\tpager = {touch}\n"
        )
        _lazy_fetch_bait(tree)
        _config(tree, "remote.origin.url", "ssh://example.invalid/x", "remote.origin.promisor", "true")
        _config(tree, "include.path", str(included), "includeIf.gitdir:/.path", str(included))
    elif name == "filters":
        (tree / ".gitattributes").write_bytes(b"* filter=evil diff=evil merge=evil\n")
        git(tree, "add", ".gitattributes")
        git(tree, "commit", "-q", "-m", "filters")
        for key in ("clean", "smudge", "process", "textconv", "command", "driver"):
            _config(tree, f"filter.evil.{key}", touch, f"diff.evil.{key}", touch, f"merge.evil.{key}", touch)
        _config(tree, "filter.evil.required", "true")
        flip_byte(tree / "notes.txt", 1)
    elif name == "other-programs":
        for key in (
            "core.pager",
            "pager.fsck",
            "pager.check-attr",
            "core.editor",
            "sequence.editor",
            "gpg.program",
            "gpg.ssh.program",
            "diff.external",
            "core.alternateRefsCommand",
            "uploadpack.packObjectsHook",
            "alias.fsck",
            "alias.check-attr",
            "sendemail.smtpServer",
            "web.browser",
        ):
            _config(tree, key, touch)
        _config(tree, "color.ui", "always", "core.untrackedCache", "true", "core.splitIndex", "true")
        flip_byte(tree / "notes.txt", 1)
    else:
        raise AssertionError(name)
    return tree


def build_read(lab: Lab, name: str) -> Path:
    """A repository that tries to make git read the secret file of this machine."""
    tree = make_repo(lab.repos / name, FILES)
    dot_git = tree / ".git"
    secret = str(lab.secret_file)
    if name == "fsck-skiplist":
        _config(tree, "fsck.skipList", secret, "fetch.fsck.skipList", secret, "receive.fsck.skipList", secret)
    elif name == "include-secret":
        _config(tree, "include.path", secret)
    elif name == "attribute-and-exclude-files":
        _config(tree, "core.attributesFile", secret, "core.excludesFile", secret, "mailmap.file", secret)
        flip_byte(tree / "app" / "main.py", 1)
    elif name == "packed-refs-symlink":
        git(tree, "pack-refs", "--all")
        os.unlink(dot_git / "packed-refs")
        os.symlink(secret, dot_git / "packed-refs")
    elif name == "head-symlink":
        os.unlink(dot_git / "HEAD")
        os.symlink(secret, dot_git / "HEAD")
    elif name == "ref-symlink":
        os.symlink(secret, dot_git / "refs" / "heads" / "evil")
    elif name == "object-symlink":
        blob = git(tree, "rev-parse", "HEAD:notes.txt").strip()
        os.unlink(dot_git / "objects" / blob[:2] / blob[2:])
        os.symlink(secret, dot_git / "objects" / blob[:2] / blob[2:])
    elif name == "index-symlink":
        os.unlink(dot_git / "index")
        os.symlink(secret, dot_git / "index")
    elif name == "alternates-and-commondir":
        (dot_git / "objects" / "info" / "alternates").write_text(f"{lab.secret_file.parent}\n{secret}\n")
        (dot_git / "commondir").write_text(f"{lab.secret_file.parent}\n")
    else:
        raise AssertionError(name)
    return tree


EXEC = (
    "fsmonitor",
    "hooks",
    "lazy-fetch-ssh",
    "lazy-fetch-upload-pack",
    "lazy-fetch-ext",
    "lazy-fetch-proxy",
    "lazy-fetch-credentials",
    "lazy-fetch-insteadof",
    "include",
    "filters",
    "other-programs",
)
READ = (
    "fsck-skiplist",
    "include-secret",
    "attribute-and-exclude-files",
    "packed-refs-symlink",
    "head-symlink",
    "ref-symlink",
    "object-symlink",
    "index-symlink",
    "alternates-and-commondir",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_program("git", "git")
    lab = Lab(tmp_path_factory.mktemp("hostile-git"))
    for name in EXEC:
        build_exec(lab, name)
    for name in READ:
        build_read(lab, name)
    lab.runs = {}
    for fsck in ("true", "false"):
        report = lab.base / f"report-fsck-{fsck}.json"
        run = fsaudit(
            "audit",
            "--check",
            "git",
            "--set",
            f"git.paths={lab.repos}",
            "--set",
            f"git.fsck={fsck}",
            "--format",
            "json",
            "--output",
            report,
        )
        outputs = [run.stdout, run.stderr, report.read_text()]
        for fmt in ("text", "html", "nagios"):
            rendered = fsaudit("report", report, "--format", fmt)
            outputs += [rendered.stdout, rendered.stderr]
        lab.runs[fsck] = (run, outputs)
    return lab


def _check(run) -> dict:
    report = json.loads(run[1][2])
    return next(c for c in report["checks"] if c["name"] == "git")


def _findings(run, tree: Path) -> list:
    check = _check(run)
    return [f for f in check["findings"] if f["path"] == str(tree) or f["path"].startswith(f"{tree}/")]


@pytest.mark.parametrize("fsck", ["true", "false"])
@pytest.mark.parametrize("name", EXEC)
def test_repository_config_runs_nothing(lab, name, fsck):
    run = lab.runs[fsck]
    assert not lab.marker(name).exists(), f"{name}: git ran a program the repository's config named"
    assert run[0].code in (1, 2, 3), run[0].stderr
    # The repository was still checked: the file that differs is reported.
    codes = {f["code"] for f in _findings(run, lab.repos / name)}
    assert codes & {"content-differs", "modified", "object-damaged", "unverified"}, codes


@pytest.mark.parametrize("name", READ)
def test_repository_cannot_make_git_read_files_of_this_machine(lab, name):
    for fsck in ("true", "false"):
        for output in lab.runs[fsck][1]:
            assert lab.secret not in output, f"{name}: the secret reached the report"
    tree = lab.repos / name
    codes = {f["code"] for f in _findings(lab.runs["true"], tree)}
    expected = {
        "fsck-skiplist": set(),
        "include-secret": set(),
        "attribute-and-exclude-files": {"content-differs"},
        "packed-refs-symlink": set(),
        "head-symlink": {"repository-damaged"},
        "ref-symlink": set(),
        "object-symlink": {"object-damaged"},
        "index-symlink": {"index-damaged"},
        "alternates-and-commondir": set(),
    }[name]
    assert expected <= codes, codes
    if name == "packed-refs-symlink":
        # Not followed, not read: the check says so instead of calling the refs fine.
        reason = _check(lab.runs["true"])["reason"]
        assert f"{tree}/.git/packed-refs was not read" in reason, reason


def test_a_planted_config_does_not_stop_the_check(lab):
    """Repositories whose config only tries to read: still verified file by file."""
    check = _check(lab.runs["true"])
    assert check["stats"]["repositories"] == len(EXEC) + len(READ)
    for name in ("fsck-skiplist", "include-secret", "ref-symlink"):
        assert not _findings(lab.runs["true"], lab.repos / name), name


def test_paths_in_the_repository_resolve_inside_the_image(tmp_path):
    """Under --root, `objects/info/alternates` and a `.git` file name paths inside the image: the
    repository's objects are found there, and never in the same place on this machine."""
    require_program("git", "git")
    image = tmp_path / "image"
    origin = make_repo(image / "srv" / "origin", FILES)
    shared = image / "srv" / "shared"
    subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(shared)], check=True)
    (shared / ".git" / "objects" / "info" / "alternates").write_text("/srv/origin/.git/objects\n")
    # A work tree whose .git file points at the repository by its path inside the image.
    linked = image / "srv" / "linked"
    linked.mkdir()
    (linked / ".git").write_text("gitdir: /srv/origin/.git\n")
    # The same repository outside the image, where a careless git would find the objects.
    host = make_repo(tmp_path / "host" / "origin", FILES)
    lonely = image / "srv" / "lonely"
    subprocess.run(["git", "clone", "-q", "--shared", str(host), str(lonely)], check=True)
    run = fsaudit(
        "audit",
        "--root",
        image,
        "--check",
        "git",
        "--set",
        "git.paths=/srv",
        "--no-drop-cache",
        "--format",
        "json",
    )
    by_tree = {}
    for finding in run.findings("git"):
        by_tree.setdefault(finding["path"].split("/")[2], set()).add(finding["code"])
    assert "shared" not in by_tree, by_tree  # its alternates resolved to /srv/origin inside the image
    assert "object-damaged" in by_tree["lonely"]  # its alternates name a host path: not inside the image
    assert run.check("git")["stats"]["repositories"] == 3
    assert run.code == 2


def test_git_runs_with_nothing_of_fsaudits_environment(tmp_path, monkeypatch):
    """GIT_* variables around fsaudit (say, an operator's shell) do not reach git either."""
    require_program("git", "git")
    tree = make_repo(tmp_path / "srv" / "app", FILES)
    marker = tmp_path / "PWNED-env"
    run = fsaudit(
        "audit",
        "--check",
        "git",
        "--set",
        f"git.paths={tmp_path / 'srv'}",
        "--format",
        "json",
        env={
            "GIT_CONFIG_PARAMETERS": f"'core.fsmonitor'='touch {marker}'",
            "GIT_DIR": str(tmp_path),
            "GIT_EXTERNAL_DIFF": f"touch {marker}",
        },
    )
    assert not marker.exists()
    assert run.code == 0, run.stdout
    assert run.check("git")["stats"]["files_verified"] == len(FILES)
    assert stat.S_ISDIR(os.stat(tree / ".git").st_mode)
