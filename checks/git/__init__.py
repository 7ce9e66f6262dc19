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
from fsaudit.outcomes import CONTENT_DIFFERS, OK, outcome, unverified_finding
from fsaudit.target import Target
from fsaudit_checks.git.index import IndexDamaged, IndexEntry, read_index

DEFAULT_PATHS = ("/srv", "/opt", "/home", "/var/www", "/root")
SEARCH_DEPTH = 8
PRUNE = {b".git", b"node_modules", b"__pycache__", b"site-packages", b".cache", b".venv", b"venv"}
INDEX_LIMIT = 512 << 20
FSCK_LINES = 50
# Safe settings for a repository we do not trust: never run a program its config names, never take
# a lock or refresh the index, accept repositories owned by another user.
GIT_CONFIG = ("-c", "safe.directory=*", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null")
_FSCK_PROBLEM = re.compile(r"^(error|fatal|missing|broken link|bad|warning in|hash mismatch)", re.I)


def git_environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    return env


def blob_header(size: int) -> bytes:
    return b"blob %d\0" % size


class GitChecker(Checker):
    """Git work trees: repository objects with `git fsck` and every tracked file against the index."""

    name = "git"
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
        "index-damaged": "the repository's index file is damaged (checksum or format)",
        "content-differs": "a tracked file changed while its size and mtime stayed as git recorded them:"
        " silent damage",
        "modified": "a tracked file differs from the committed version (an uncommitted edit, or damage)",
        "missing": "a tracked file is gone from the work tree",
        "wrong-type": "something else stands where a tracked file or symlink belongs",
        "unreadable": "a tracked file could not be read",
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
        for tree in self._work_trees(target):
            git_dir = self._git_dir(target, tree)
            if git_dir is None or target.resolve(git_dir) in seen:
                continue
            seen.add(target.resolve(git_dir))
            self.count("repositories")
            if self.settings["fsck"]:
                yield from self._fsck(target, tree, git_dir)
            yield from self._tracked_files(target, tree, git_dir)

    def _git(self, target: Target, git_dir: bytes, *args: str, timeout: int) -> subprocess.CompletedProcess:
        command = ["git", *GIT_CONFIG, f"--git-dir={os.fsdecode(target.resolve(git_dir))}", *args]
        return subprocess.run(
            command,
            capture_output=True,
            timeout=timeout,
            env=git_environment(),
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def _fsck(self, target: Target, tree: bytes, git_dir: bytes) -> Iterator:
        advice = "re-deploy this tree from its remote (git clone), or restore the repository from backup"
        try:
            done = self._git(
                target,
                git_dir,
                "fsck",
                "--full",
                "--no-progress",
                "--no-dangling",
                timeout=self.settings["timeout"],
            )
        except subprocess.TimeoutExpired:
            self.incomplete(
                f"git fsck took longer than {self.settings['timeout']} s in {target.display(tree)}"
            )
            return
        output = (done.stdout + done.stderr).decode("utf-8", "replace").splitlines()
        problems = [line for line in output if _FSCK_PROBLEM.match(line.strip())]
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
                "git_dir": target.display(git_dir),
            },
            advice=advice,
        )

    def _entries(self, target: Target, tree: bytes, git_dir: bytes) -> Tuple[List[IndexEntry], Optional[str]]:
        index = git_dir + b"/index"
        try:
            data = target.read_bytes(index, limit=INDEX_LIMIT)
        except FileNotFoundError:
            return [], None
        except OSError as error:
            return [], f"cannot read the index: {error.strerror or error}"
        hash_size = 32 if self._object_format(target, git_dir) == "sha256" else 20
        try:
            return read_index(data, hash_size), None
        except IndexDamaged as error:
            return [], str(error)

    def _object_format(self, target: Target, git_dir: bytes) -> str:
        try:
            config = target.read_text(git_dir + b"/config", limit=1 << 20)
        except OSError:
            return "sha1"
        match = re.search(r"^\s*objectformat\s*=\s*(\w+)", config, re.I | re.M)
        return match.group(1).lower() if match else "sha1"

    def _tracked_files(self, target: Target, tree: bytes, git_dir: bytes) -> Iterator:
        entries, damage = self._entries(target, tree, git_dir)
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
            requests.append(HashRequest(path, "sha1", prefix=b"blob %d\0", key=entry, follow=False))
        for result in hash_files(target, requests, self.context, self.stats):
            entry = result.request.key
            path = result.request.path
            verdict = outcome(result, entry.object_id)
            if verdict == OK:
                self.count("files_verified")
                self.context.verified.add(path)
            elif verdict == CONTENT_DIFFERS:
                mismatched.append((path, entry, result))
            else:
                yield unverified_finding(self, verdict, result, path, advice, "tracked file")
        yield from self._mismatches(target, tree, git_dir, mismatched, advice)

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

    def _filtered(self, target: Target, git_dir: bytes, tree: bytes, paths: List[bytes]) -> set:
        """Paths git converts on checkout (filters, eol), whose bytes cannot match the blob as is."""
        if not paths:
            return set()
        base = b"" if tree == b"/" else tree.rstrip(b"/")
        relative = [p[len(base) + 1 :] for p in paths]
        command_input = b"\0".join(relative) + b"\0"
        done = subprocess.run(
            [
                "git",
                *GIT_CONFIG,
                f"--git-dir={os.fsdecode(target.resolve(git_dir))}",
                f"--work-tree={os.fsdecode(target.resolve(tree))}",
                "check-attr",
                "-z",
                "--stdin",
                "filter",
                "text",
                "eol",
                "ident",
                "working-tree-encoding",
            ],
            input=command_input,
            capture_output=True,
            env=git_environment(),
            timeout=300,
            check=False,
        )
        fields = done.stdout.split(b"\0")
        converted = set()
        for index in range(0, len(fields) - 2, 3):
            name, attribute, value = fields[index : index + 3]
            if value not in (b"unspecified", b"unset") and not (attribute == b"text" and value == b"auto"):
                converted.add(base + b"/" + name)
        autocrlf = self._git(target, git_dir, "config", "--get", "core.autocrlf", timeout=60).stdout.strip()
        if autocrlf in (b"true", b"input"):
            converted.update(paths)
        return converted

    def _mismatches(
        self, target: Target, tree: bytes, git_dir: bytes, mismatched: list, advice: str
    ) -> Iterator:
        converted = self._filtered(target, git_dir, tree, [path for path, _, _ in mismatched])
        unverified = 0
        for path, entry, result in mismatched:
            if path in converted:
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
