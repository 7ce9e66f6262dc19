"""Checker `git`: git work trees: object damage (`git fsck`) and tracked files that differ or vanished."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from typing import Iterator, List, Optional, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import HashRequest, hash_files
from fsaudit.outcomes import (
    ANOMALY_CODES,
    CONTENT_DIFFERS,
    OK,
    PERMISSION_DENIED,
    not_checked_for_permission,
    outcome,
    unverified_finding,
)
from fsaudit.target import Target
from fsaudit_checks.git.index import IndexDamaged, IndexEntry, read_index
from fsaudit_checks.git.sandbox import GitSandbox, RepositoryConfig, locate_common_dir

DEFAULT_PATHS = ("/srv", "/opt", "/home", "/var/www", "/root")
SEARCH_DEPTH = 8
PRUNE = {b".git", b"node_modules", b"__pycache__", b"site-packages", b".cache", b".venv", b"venv"}
INDEX_LIMIT = 512 << 20
FSCK_LINES = 50
FSCK_LINE_LENGTH = 500
ATTRIBUTES_TIMEOUT = 300
_FSCK_PROBLEM = re.compile(r"^(error|fatal|missing|broken link|bad|warning in|hash mismatch)", re.I)


def blob_header(size: int) -> bytes:
    return b"blob %d\0" % size


class GitChecker(Checker):
    """Git work trees: repository objects with `git fsck` and every tracked file against the index."""

    name = "git"
    covers = "git checkouts"
    category = "applications"
    self_check = True
    options = (
        Option(
            "paths", "Directories to search for git work trees (default: the usual places)", multiple=True
        ),
        Option("fsck", "Run git fsck --full on each repository", kind=bool, default=True),
        Option("timeout", "Seconds git fsck may take per repository", kind=int, default=1800),
    )
    codes = {
        "object-damaged": "git fsck reports damaged or missing objects in the repository",
        "repository-damaged": "the repository's HEAD or config is damaged (git would refuse the repository)",
        "index-damaged": "the repository's index file is damaged (checksum or format)",
        "content-differs": "a tracked file changed while its size and mtime stayed as git recorded them:"
        " silent damage",
        "modified": "a tracked file differs from the committed version (an uncommitted edit, or damage)",
        "missing": "a tracked file is gone from the work tree",
        "wrong-type": "something else stands where a tracked file or symlink belongs",
        "unreadable": "a tracked file could not be read",
        **ANOMALY_CODES,
        "unverified": "tracked files that could not be compared (content filters, line-ending conversion)",
    }

    def applies(self, target: Target) -> bool:
        if shutil.which("git") is None:
            raise Skip("needs the git program: apt-get install git (or dnf install git)")
        return True

    def _work_trees(self, target: Target) -> Iterator[bytes]:
        def prune(path: bytes, entry) -> bool:
            return entry.name in PRUNE

        for top in self.settings["paths"] or DEFAULT_PATHS:
            if not target.exists(top, follow=True):
                continue
            for directory, entries in target.walk(
                top, prune=prune, onerror=lambda path, error: None, max_depth=SEARCH_DEPTH
            ):
                if any(entry.name == b".git" for entry in entries):
                    yield directory

    def _git_dir(self, target: Target, tree: bytes) -> Optional[bytes]:
        """The repository directory of a work tree, resolved inside the root (`.git` may be a file)."""
        dot_git = tree.rstrip(b"/") + b"/.git"
        try:
            st = target.lstat(dot_git)
        except OSError:
            return None
        if not os.path.isfile(target.resolve(dot_git)) or st.st_size > 4096:
            return dot_git
        text = target.read_bytes(dot_git, limit=4096).strip()
        if not text.startswith(b"gitdir:"):
            return None
        pointed = text[len(b"gitdir:") :].strip()
        return pointed if pointed.startswith(b"/") else tree.rstrip(b"/") + b"/" + pointed

    def run(self, target: Target) -> Iterator:
        seen = set()
        checked = set()
        for tree in self._work_trees(target):
            git_dir = self._git_dir(target, tree)
            if git_dir is None or target.resolve(git_dir) in seen:
                continue
            seen.add(target.resolve(git_dir))
            self.count("repositories")
            common_dir = locate_common_dir(target, git_dir)
            config = RepositoryConfig.read(target, common_dir)
            if config.object_format not in ("sha1", "sha256"):
                self.incomplete(
                    f"{target.display(tree)} was not checked: its object format {config.object_format!r}"
                    " is unknown"
                )
                continue
            if config.damage:
                yield self._repository_damaged(
                    target, tree, common_dir, f"its config is damaged ({config.damage})"
                )
            # A linked work tree shares its repository's objects: one fsck for them all.
            fsck = self.settings["fsck"] and common_dir not in checked
            checked.add(common_dir)
            try:
                if fsck and git_dir != common_dir:
                    # fsck sees the repository from its own git directory, with every work tree's
                    # HEAD and index as roots, whichever work tree was found first.
                    with GitSandbox(target, common_dir, common_dir, config) as sandbox:
                        yield from self._fsck(target, tree, common_dir, config, sandbox)
                    fsck = False
                with GitSandbox(target, git_dir, common_dir, config) as sandbox:
                    if sandbox.head_damage:
                        yield self._repository_damaged(target, tree, git_dir, sandbox.head_damage)
                    if fsck:
                        yield from self._fsck(target, tree, common_dir, config, sandbox)
                    yield from self._tracked_files(target, tree, git_dir, config, sandbox)
                    if self.settings["fsck"] and git_dir != common_dir and not config.partial_clone:
                        yield from self._linked_index_objects(target, tree, git_dir, config, sandbox)
            except OSError as error:
                # The scratch repository is on this machine: failing to make it is our failure.
                self.incomplete(f"{target.display(tree)} was not checked: {error.strerror or error}")

    def _repository_damaged(self, target: Target, tree: bytes, where: bytes, problem: str):
        return self.finding(
            "repository-damaged",
            "critical",
            f"the repository is damaged: {problem}",
            path=tree,
            details={"git_dir": target.display(where)},
            advice="re-deploy this tree from its remote (git clone), or restore the repository from backup",
        )

    def _fsck(
        self, target: Target, tree: bytes, common_dir: bytes, config: RepositoryConfig, sandbox: GitSandbox
    ) -> Iterator:
        advice = "re-deploy this tree from its remote (git clone), or restore the repository from backup"
        shown = target.display(tree)
        if config.unknown_extensions:
            self.count("repositories_fsck_skipped")
            self.incomplete(
                f"git fsck was not run in {shown}: it uses repository extensions this git does not know"
                f" ({', '.join(config.unknown_extensions)})"
            )
            return
        for note in sandbox.notes:
            self.incomplete(f"git fsck in {shown} is incomplete: {note}")
        arguments = ["fsck", "--full", "--no-progress", "--no-dangling"]
        if not sandbox.reflogs:
            arguments.append("--no-reflogs")
        try:
            done = sandbox.run(*arguments, timeout=self.settings["timeout"])
        except subprocess.TimeoutExpired:
            self.incomplete(f"git fsck took longer than {self.settings['timeout']} s in {shown}")
            return
        output = sandbox.display((done.stdout + done.stderr).decode("utf-8", "replace")).splitlines()
        output = [line[:FSCK_LINE_LENGTH] for line in output]
        problems = [line for line in output if _FSCK_PROBLEM.match(line.strip())]
        denied = [line for line in problems if "Permission denied" in line]
        if denied:
            # Objects this user may not read are not damaged: the check is incomplete instead.
            not_checked_for_permission(self, len(denied))
            problems = [line for line in problems if line not in denied]
            if not problems:
                return
        if done.returncode == 0 and not problems:
            self.count("repositories_fsck_clean")
            return
        if not problems:
            problems = output[-5:] or [f"git fsck exited with status {done.returncode}"]
        yield self.finding(
            "object-damaged",
            "critical",
            f"git fsck reports {len(problems)} problem(s) in the repository: {problems[0]}",
            path=tree,
            details={
                "fsck": problems[:FSCK_LINES],
                "problems": len(problems),
                "git_dir": target.display(common_dir),
            },
            advice=advice,
        )

    def _entries(
        self, target: Target, git_dir: bytes, config: RepositoryConfig
    ) -> Tuple[List[IndexEntry], Optional[str]]:
        index = git_dir + b"/index"
        try:
            data = target.read_bytes(index, limit=INDEX_LIMIT, follow=False)
        except FileNotFoundError:
            return [], None
        except PermissionError:
            not_checked_for_permission(self)
            return [], None
        except OSError as error:
            return [], f"cannot read the index: {error.strerror or error}"
        hash_size = 32 if config.object_format == "sha256" else 20
        try:
            return read_index(data, hash_size), None
        except IndexDamaged as error:
            return [], str(error)

    def _linked_index_objects(
        self, target: Target, tree: bytes, git_dir: bytes, config: RepositoryConfig, sandbox: GitSandbox
    ) -> Iterator:
        """The objects a linked work tree's index names must exist: git fsck before 2.41 checks the
        index of the work tree it runs in only, so the repository's fsck does not cover this one."""
        entries, damage = self._entries(target, git_dir, config)
        ids = sorted({entry.object_id for entry in entries if entry.kind != "submodule"})
        if damage or not ids:
            return
        try:
            done = sandbox.run(
                "cat-file",
                "--batch-check",
                stdin=("\n".join(ids) + "\n").encode(),
                timeout=ATTRIBUTES_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            self.incomplete(f"the objects of {target.display(tree)}'s index could not be checked in time")
            return
        missing = [
            line.split()[0]
            for line in done.stdout.decode("ascii", "replace").splitlines()
            if line.endswith(" missing")
        ]
        if not missing:
            return
        yield self.finding(
            "object-damaged",
            "critical",
            f"{len(missing)} object(s) this work tree's index names are missing from the repository",
            path=tree,
            details={
                "fsck": [f"missing blob {oid}" for oid in missing[:FSCK_LINES]],
                "problems": len(missing),
                "git_dir": target.display(git_dir),
            },
            advice="re-deploy this tree from its remote (git clone), or restore the repository from backup",
        )

    def _tracked_files(
        self, target: Target, tree: bytes, git_dir: bytes, config: RepositoryConfig, sandbox: GitSandbox
    ) -> Iterator:
        entries, damage = self._entries(target, git_dir, config)
        advice = "re-deploy this tree from its remote, or restore the file from backup"
        if damage:
            yield self.finding(
                "index-damaged",
                "critical",
                f"the git index is damaged ({damage}); tracked files could not be compared",
                path=git_dir + b"/index",
                details={"work_tree": target.display(tree)},
                advice="check the repository with git fsck; re-create the index with `git reset` "
                "(keeps your files), or re-deploy the tree",
            )
            self.incomplete("a git index was damaged, so its tracked files were not compared")
            return
        base = b"" if tree == b"/" else tree.rstrip(b"/")
        by_path = {}
        requests = []
        mismatched = []
        for entry in entries:
            if entry.skip_worktree or entry.kind == "submodule":
                continue
            path = base + b"/" + entry.path
            if entry.kind == "symlink":
                yield from self._symlink(target, path, entry, advice)
                continue
            by_path[path] = entry
            requests.append(
                HashRequest(path, config.object_format, prefix=b"blob %d\0", key=entry, follow=False)
            )
        for result in hash_files(target, requests, self.context, self.stats):
            entry = result.request.key
            path = result.request.path
            verdict = outcome(result, entry.object_id)
            if verdict == OK:
                self.count("files_verified")
                self.context.verified.add(path)
            elif verdict == CONTENT_DIFFERS:
                mismatched.append((path, entry, result))
            elif verdict == PERMISSION_DENIED:
                not_checked_for_permission(self)
            else:
                yield unverified_finding(self, verdict, result, path, advice, "tracked file")
        yield from self._mismatches(target, tree, config, sandbox, mismatched, advice)

    def _symlink(self, target: Target, path: bytes, entry: IndexEntry, advice: str) -> Iterator:
        try:
            link = target.readlink(path)
        except FileNotFoundError:
            yield self.finding("missing", "critical", "tracked symlink is missing", path=path, advice=advice)
            return
        except OSError as error:
            yield self.finding(
                "wrong-type", "critical", f"not a symlink ({error.strerror})", path=path, advice=advice
            )
            return
        algorithm = "sha1" if len(entry.object_id) == 40 else "sha256"
        if hashlib.new(algorithm, blob_header(len(link)) + link).hexdigest() == entry.object_id:
            self.count("files_verified")
        else:
            yield self.finding(
                "modified",
                "warning",
                "tracked symlink points elsewhere than committed",
                path=path,
                details={"target": link},
                advice=advice,
            )

    def _filtered(
        self, target: Target, tree: bytes, config: RepositoryConfig, sandbox: GitSandbox, paths: List[bytes]
    ) -> Optional[set]:
        """Paths git converts on checkout (filters, eol), whose bytes cannot match the blob as is;
        None when git could not say. The attributes are read from the index (`--cached`): those
        checkout applied, and git reads no file of the work tree."""
        if not paths:
            return set()
        if config.autocrlf in ("true", "input") or config.eol == "crlf":
            return set(paths)
        if not sandbox.index_copied:
            return None
        base = b"" if tree == b"/" else tree.rstrip(b"/")
        relative = [p[len(base) + 1 :] for p in paths]
        try:
            done = sandbox.run(
                "check-attr",
                "--cached",
                "-z",
                "--stdin",
                "filter",
                "text",
                "eol",
                "ident",
                "working-tree-encoding",
                stdin=b"\0".join(relative) + b"\0",
                timeout=ATTRIBUTES_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        fields = done.stdout.split(b"\0")
        converted = set()
        for index in range(0, len(fields) - 2, 3):
            name, attribute, value = fields[index : index + 3]
            if value not in (b"unspecified", b"unset") and not (attribute == b"text" and value == b"auto"):
                converted.add(base + b"/" + name)
        return converted

    def _mismatches(
        self,
        target: Target,
        tree: bytes,
        config: RepositoryConfig,
        sandbox: GitSandbox,
        mismatched: list,
        advice: str,
    ) -> Iterator:
        converted = self._filtered(target, tree, config, sandbox, [path for path, _, _ in mismatched])
        if converted is None:
            self.incomplete(
                f"git could not say which files of {target.display(tree)} it converts on checkout:"
                " the files that differ were not judged"
            )
        unverified = 0
        for path, entry, result in mismatched:
            if converted is None or path in converted:
                unverified += 1
                continue
            self.count("files_verified")
            details = {
                "work_tree": target.display(tree),
                "index_size": entry.size,
                "actual_size": result.size,
                "committed_object": entry.object_id,
            }
            same_stat = (
                result.size == entry.size and result.mtime is not None and int(result.mtime) == entry.mtime
            )
            if same_stat:
                yield self.finding(
                    "content-differs",
                    "critical",
                    "content changed while its size and modification time stayed as git recorded them",
                    path=path,
                    details=details,
                    advice=advice,
                )
            else:
                yield self.finding(
                    "modified",
                    "warning",
                    "differs from the committed version (an uncommitted edit, or damage)",
                    path=path,
                    details=details,
                    advice="if nobody edited this file, re-deploy the tree from its remote",
                )
        if unverified:
            self.count("files_unverified", unverified)
            yield self.finding(
                "unverified",
                "info",
                f"{unverified} tracked files differ from their blobs but git converts them on checkout"
                " (filters or line endings), so they could not be compared",
                path=tree,
            )
