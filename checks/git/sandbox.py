"""Running git over a repository of the audited system without letting the repository steer git.

git obeys a repository's `config` and helper files: `core.fsmonitor`, hooks and, through a lazy fetch
of a partial clone, `core.sshCommand` make it run programs (as root, for fsaudit); `fsck.skipList`,
`include.path` and `objects/info/alternates` make it read files of this machine and quote them in its
errors. Overriding keys with `-c` cannot cover them all (multi-valued keys add up, extensions are read
from the repository alone, git's own key list grows), so git never sees the repository's git
directory at all. A scratch repository on this machine, made fresh for each run, holds:

- our own `config` (the object format and, for a partial clone, a promisor remote with no URL);
- copies of `HEAD`, the refs, `packed-refs`, the reflogs, `shallow`, `info/grafts`, `info/attributes`
  and the index, read through the Target (inside the root, no final symlink, regular files only,
  bounded);
- an `objects` directory of symlinks to the object directories (fan-out and `pack`) resolved inside
  the root, with an `info/alternates` fsaudit wrote from the repository's own, also resolved inside
  the root.

git then runs with an environment of our own (no system or global config, HOME an empty directory, no
lazy fetch, no transport allowed, no prompts, no optional locks) and `-c` settings that close what
remains. What git prints names the scratch directory; `display()` turns it back into the repository's
path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from fsaudit.target import Target
from fsaudit_checks.git.config import ConfigDamaged, is_true, last_value, parse_config

GIT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1 << 20
MAX_SMALL = 4096
MAX_PACKED_REFS = 256 << 20
MAX_LOOSE_REFS = 200_000
MAX_REFLOG_BYTES = 256 << 20
MAX_INDEX = 512 << 20
MAX_INFO_FILE = 64 << 20
MAX_ALTERNATES = 64
ALTERNATE_DEPTH = 5  # as git: alternates of alternates, five levels deep
MAX_WORKTREES = 1000
PROMISOR = "fsaudit-promisor"
# Extensions git 2.39 knows; a repository that needs another one cannot be read by this git.
KNOWN_EXTENSIONS = {"noop", "noop-v1", "preciousobjects", "partialclone", "worktreeconfig", "objectformat"}

# Command-line settings outrank every file git reads and reach the git processes git starts itself
# (the fetch of a lazy fetch, `commit-graph verify`): nothing may run a program, ask for a password,
# open a connection or read a file outside the scratch repository.
SAFE_CONFIG = (
    "safe.directory=*",
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.sshCommand=false",
    "core.gitProxy=",
    "core.askPass=false",
    "core.pager=cat",
    "core.attributesFile=/dev/null",
    "core.excludesFile=/dev/null",
    "core.alternateRefsCommand=",
    "core.untrackedCache=false",
    "core.splitIndex=false",
    "credential.helper=",
    "protocol.allow=never",
    "gc.auto=0",
    "maintenance.auto=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
)
_HEAD = re.compile(rb"^(ref: refs/[^\0\n]+|[0-9a-f]{40}|[0-9a-f]{64})\n?$")
_FANOUT = re.compile(rb"^[0-9a-f]{2}$")
_SHARED_INDEX = re.compile(rb"^sharedindex\.[0-9a-f]{40,64}$")


class TooLarge(OSError):
    """A file of the repository is larger than fsaudit copies for git."""


@dataclass
class RepositoryConfig:
    """What fsaudit takes from a repository's config (read by config.py, never by git)."""

    object_format: str = "sha1"
    partial_clone: bool = False
    autocrlf: str = ""
    eol: str = ""
    unknown_extensions: List[str] = field(default_factory=list)
    damage: str = ""

    @classmethod
    def read(cls, target: Target, common_dir: bytes) -> RepositoryConfig:
        try:
            data = target.read_bytes(common_dir + b"/config", limit=1 << 20, follow=False)
        except OSError:
            return cls()
        try:
            entries = parse_config(data)
        except ConfigDamaged as error:
            return cls(damage=str(error))
        extensions = {key.split(".", 1)[1] for key, _ in entries if key.startswith("extensions.")}
        version = (last_value(entries, "core.repositoryformatversion") or "0").strip()
        # Extensions count only in a version 1 repository (gitrepository-layout(5)).
        if version != "1":
            extensions = set()
        promisors = any(
            key.startswith("remote.") and key.endswith(".promisor") and is_true(value or "true")
            for key, value in entries
        )
        return cls(
            object_format=(last_value(entries, "extensions.objectformat") or "sha1").lower()
            if "objectformat" in extensions
            else "sha1",
            partial_clone="partialclone" in extensions or promisors,
            autocrlf=(last_value(entries, "core.autocrlf") or "").lower(),
            eol=(last_value(entries, "core.eol") or "").lower(),
            unknown_extensions=sorted(extensions - KNOWN_EXTENSIONS),
        )


def git_environment(scratch: str) -> Dict[str, str]:
    """The whole environment of a git run: nothing inherited from fsaudit's own."""
    home = os.path.join(scratch, "home")
    return {
        "PATH": GIT_PATH,
        "LC_ALL": "C",
        "HOME": home,
        "XDG_CONFIG_HOME": home,
        "GIT_DIR": os.path.join(scratch, "repo"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_SYSTEM": "/dev/null",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_NO_LAZY_FETCH": "1",  # git >= 2.44; older ones meet protocol.allow=never instead
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_SSH_COMMAND": "false",
        "GIT_ASKPASS": "false",
        "SSH_ASKPASS": "false",
        "GIT_PAGER": "cat",
    }


def locate_common_dir(target: Target, git_dir: bytes) -> bytes:
    """The repository's common directory: a linked work tree's `commondir` names it (relative to
    the work tree's git directory, or absolute inside the root); otherwise the git directory."""
    try:
        pointer = target.read_bytes(git_dir + b"/commondir", limit=MAX_SMALL, follow=False).strip()
    except OSError:
        return git_dir
    if not pointer or b"\0" in pointer:
        return git_dir
    inner = pointer if pointer.startswith(b"/") else git_dir.rstrip(b"/") + b"/" + pointer
    try:
        return target.inner_path(target.resolve(inner))
    except OSError:
        return git_dir


def _unquote(line: bytes) -> bytes:
    """A C-style quoted alternates line ("\\"...\\"", git's quote_c_style) as its bytes."""
    if not (line.startswith(b'"') and line.endswith(b'"') and len(line) >= 2):
        return line
    body, out, index = line[1:-1], bytearray(), 0
    simple = {ord("n"): 10, ord("t"): 9, ord('"'): 34, ord("\\"): 92, ord("a"): 7, ord("b"): 8}
    simple.update({ord("f"): 12, ord("r"): 13, ord("v"): 11})
    while index < len(body):
        byte = body[index]
        if byte == 92 and index + 1 < len(body):
            following = body[index + 1]
            if following in simple:
                out.append(simple[following])
                index += 2
                continue
            octal = body[index + 1 : index + 4]
            if re.fullmatch(rb"[0-3][0-7]{2}", octal):
                out.append(int(octal, 8))
                index += 4
                continue
        out.append(byte)
        index += 1
    return bytes(out)


class GitSandbox:
    """A scratch repository showing git one repository of the target (see the module's docstring).

    `git_dir` is the work tree's git directory (HEAD, index), `common_dir` the repository's (objects,
    refs, config); both are paths inside the target. Use as a context manager; `notes` says what
    could not be shown to git, `head_damage` why HEAD was unusable.
    """

    def __init__(self, target: Target, git_dir: bytes, common_dir: bytes, config: RepositoryConfig):
        self.target = target
        self.git_dir = git_dir
        self.common_dir = common_dir
        self.config = config
        self.notes: List[str] = []
        self.head_damage: Optional[str] = None
        self.reflogs = True
        self.index_copied = False
        self._scratch: Optional[str] = None
        self._names: Dict[str, str] = {}

    # -- the scratch repository ----------------------------------------------------------------

    @property
    def repo(self) -> str:
        return os.path.join(self._scratch, "repo")

    def __enter__(self) -> GitSandbox:
        self._scratch = tempfile.mkdtemp(prefix="fsaudit-git-")
        try:
            os.mkdir(os.path.join(self._scratch, "home"))
            os.mkdir(self.repo)
            self._write_config()
            self._copy_head()
            self._copy_refs()
            self._copy_optional()
            self._link_objects()
            self._copy_worktrees()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _write_config(self) -> None:
        lines = ["[core]", "\trepositoryformatversion = 1", "\tbare = true", "[extensions]"]
        lines.append(f"\tobjectFormat = {'sha256' if self.config.object_format == 'sha256' else 'sha1'}")
        if self.config.partial_clone:
            # Objects a partial clone never fetched are not damage: git fsck knows promisor packs
            # once the repository has a promisor remote. This one has no URL, and fetching is off.
            lines.append(f"\tpartialClone = {PROMISOR}")
        _write(os.path.join(self.repo, "config"), ("\n".join(lines) + "\n").encode())
        os.mkdir(os.path.join(self.repo, "refs"))
        os.mkdir(os.path.join(self.repo, "info"))

    def _copy(self, inner: bytes, destination: str, limit: int) -> int:
        """Copy a regular file of the target (no final symlink) to the scratch repository."""
        copied = 0
        with self.target.open(inner, follow=False) as source:
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb") as out:
                while True:
                    block = source.read(min(CHUNK, limit + 1 - copied))
                    if not block:
                        return copied
                    copied += len(block)
                    if copied > limit:
                        raise TooLarge(f"{self.target.display(inner)} is larger than {limit:,} bytes")
                    out.write(block)

    def _copy_head(self) -> None:
        head = self.git_dir + b"/HEAD"
        text = None
        try:
            text = self.target.read_bytes(head, limit=MAX_SMALL, follow=False)
        except OSError as error:
            try:
                # A symlinked HEAD (an old git's symref) is fine when it points at a branch.
                link = self.target.readlink(head)
                text = b"ref: " + link + b"\n" if link.startswith(b"refs/") else None
            except OSError:
                text = None
            if text is None:
                self.head_damage = f"HEAD cannot be read: {error.strerror or error}"
        if text is not None and not _HEAD.match(text):
            self.head_damage = f"HEAD does not hold a branch or an object id ({len(text)} bytes)"
            text = None
        # git needs a valid HEAD to accept the directory as a repository at all.
        _write(os.path.join(self.repo, "HEAD"), text or b"ref: refs/heads/fsaudit-damaged-head\n")

    def _copy_tree(self, top: bytes, destination: str, budget: List[int], max_files: int) -> bool:
        """Copy the regular files below `top` (loose refs, reflogs); False when a bound cut it."""
        try:
            start = self.target.inner_path(self.target.resolve(top))
        except OSError:
            return True
        if not self.target.exists(start):
            return True
        files = 0
        complete = True
        for directory, entries in self.target.walk(start, onerror=lambda path, error: None, max_depth=64):
            relative = directory[len(start) :].lstrip(b"/")
            into = os.path.join(os.fsencode(destination), relative)
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if files >= max_files or size > budget[0]:
                    return False
                try:
                    os.makedirs(into, exist_ok=True)
                    budget[0] -= self._copy(
                        directory.rstrip(b"/") + b"/" + entry.name, os.path.join(into, entry.name), budget[0]
                    )
                    files += 1
                except OSError:
                    complete = False
        return complete

    def _copy_refs(self) -> None:
        refs = self.common_dir + b"/refs"
        if not self._copy_tree(refs, os.path.join(self.repo, "refs"), [MAX_PACKED_REFS], MAX_LOOSE_REFS):
            self.notes.append("not every loose ref could be copied")
        self._copy_if_present(self.common_dir + b"/packed-refs", "packed-refs", MAX_PACKED_REFS)
        budget = [MAX_REFLOG_BYTES]
        logs = os.path.join(self.repo, "logs")
        complete = self._copy_tree(
            self.common_dir + b"/logs/refs", os.path.join(logs, "refs"), budget, 100_000
        )
        head_log = self.git_dir + b"/logs/HEAD"
        if complete and self.target.exists(head_log):
            os.makedirs(logs, exist_ok=True)
            complete = self._copy_if_present(head_log, os.path.join("logs", "HEAD"), budget[0])
        if not complete:
            # Without every reflog, objects only they keep would look unreachable; without any,
            # git fsck simply does not treat reflogs as roots.
            shutil.rmtree(logs, ignore_errors=True)
            self.reflogs = False
            self.notes.append("the reflogs are too large to copy: they were left out of git fsck")

    def _copy_if_present(self, inner: bytes, name: str, limit: int) -> bool:
        try:
            self._copy(inner, os.path.join(self.repo, name), limit)
        except FileNotFoundError:
            return True
        except OSError as error:
            try:
                os.unlink(os.path.join(self.repo, name))
            except OSError:
                pass
            self.notes.append(f"{self.target.display(inner)} was not read: {error.strerror or error}")
            return False
        return True

    def _copy_optional(self) -> None:
        self._copy_if_present(self.common_dir + b"/shallow", "shallow", MAX_INFO_FILE)
        self._copy_if_present(
            self.common_dir + b"/info/grafts", os.path.join("info", "grafts"), MAX_INFO_FILE
        )
        self._copy_if_present(
            self.common_dir + b"/info/attributes", os.path.join("info", "attributes"), MAX_INFO_FILE
        )
        self.index_copied = self._copy_if_present(self.git_dir + b"/index", "index", MAX_INDEX)
        try:
            names = self.target.listdir(self.git_dir)
        except OSError:
            names = []
        for name in [n for n in names if _SHARED_INDEX.match(n)][:4]:
            self._copy_if_present(self.git_dir + b"/" + name, os.fsdecode(name), MAX_INDEX)

    def _copy_worktrees(self) -> None:
        """The HEAD and index of each linked work tree: git fsck counts their objects as reachable."""
        if self.git_dir != self.common_dir:
            return
        base = self.common_dir + b"/worktrees"
        try:
            names = sorted(self.target.listdir(base))[:MAX_WORKTREES]
        except OSError:
            return
        for name in names:
            into = os.path.join(self.repo, "worktrees", os.fsdecode(name))
            try:
                os.makedirs(into)
                head = self.target.read_bytes(base + b"/" + name + b"/HEAD", limit=MAX_SMALL, follow=False)
            except OSError:
                continue
            if not _HEAD.match(head):
                continue
            _write(os.path.join(into, "HEAD"), head)
            _write(os.path.join(into, "commondir"), b"../..\n")
            _write(os.path.join(into, "gitdir"), os.fsencode(os.path.join(into, "tree", ".git")) + b"\n")
            try:
                self._copy(base + b"/" + name + b"/index", os.path.join(into, "index"), MAX_INDEX)
            except OSError:
                pass

    # -- objects -------------------------------------------------------------------------------

    def _link_objects(self) -> None:
        objects = os.path.join(self.repo, "objects")
        main = self.common_dir + b"/objects"
        self._link_object_dir(main, objects)
        chain = self._alternates(main)
        lines = []
        for number, inner in enumerate(chain):
            directory = os.path.join(self._scratch, "alternates", str(number))
            os.makedirs(directory)
            self._link_object_dir(inner, directory)
            lines.append(directory)
        if lines:
            _write(os.path.join(objects, "info", "alternates"), ("\n".join(lines) + "\n").encode())

    def _link_object_dir(self, inner: bytes, directory: str) -> None:
        """`directory` made to show the object directory `inner` of the target, without its
        `info/alternates`."""
        os.makedirs(os.path.join(directory, "info"), exist_ok=True)
        self._names[directory] = self.target.display(inner)
        try:
            names = self.target.listdir(inner)
        except OSError as error:
            self.notes.append(f"{self.target.display(inner)} cannot be listed: {error.strerror or error}")
            return
        for name in names:
            if _FANOUT.match(name) or name == b"pack":
                self._link(inner + b"/" + name, os.path.join(os.fsencode(directory), name))
        for name in (b"commit-graph", b"commit-graphs"):
            if self.target.exists(inner + b"/info/" + name):
                self._link(inner + b"/info/" + name, os.path.join(os.fsencode(directory), b"info", name))

    def _link(self, inner: bytes, link: bytes) -> None:
        try:
            os.symlink(self.target.resolve(inner), link)
        except OSError as error:
            self.notes.append(f"{self.target.display(inner)} was not shown to git: {error.strerror or error}")

    def _alternates(self, main: bytes) -> List[bytes]:
        """The object directories `info/alternates` names, transitively, resolved inside the root."""
        found: List[bytes] = []
        seen = {self._canonical(main)}
        pending = [(main, 0)]
        while pending:
            objects, depth = pending.pop(0)
            try:
                data = self.target.read_bytes(
                    objects + b"/info/alternates", limit=MAX_SMALL * 16, follow=False
                )
            except OSError:
                continue
            if depth >= ALTERNATE_DEPTH:
                self.notes.append("alternates are nested more than five levels deep: the rest were left out")
                continue
            for line in data.splitlines():
                line = _unquote(line.strip())
                if not line or line.startswith(b"#") or b"\0" in line:
                    continue
                inner = line if line.startswith(b"/") else objects.rstrip(b"/") + b"/" + line
                canonical = self._canonical(inner)
                if canonical is None or canonical in seen:
                    continue
                if len(found) >= MAX_ALTERNATES:
                    self.notes.append(f"more than {MAX_ALTERNATES} alternate object directories")
                    return found
                seen.add(canonical)
                found.append(canonical)
                pending.append((canonical, depth + 1))
        return found

    def _canonical(self, inner: bytes) -> Optional[bytes]:
        try:
            return self.target.inner_path(self.target.resolve(inner))
        except OSError:
            return None

    # -- running git ---------------------------------------------------------------------------

    def run(self, *args: str, timeout: float, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        """`git ARGS` over the scratch repository; raises subprocess.TimeoutExpired."""
        command = ["git", "--no-pager"]
        for setting in SAFE_CONFIG:
            command += ["-c", setting]
        return subprocess.run(
            [*command, *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            env=git_environment(self._scratch),
            cwd=self._scratch,
            timeout=timeout,
            check=False,
        )

    def display(self, text: str) -> str:
        """git's words with the scratch directories named as the repository's own."""
        for scratch, shown in sorted(self._names.items(), key=lambda item: -len(item[0])):
            text = text.replace(scratch, shown)
        if self._scratch:
            text = text.replace(self.repo, self.target.display(self.common_dir))
        return text


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as out:
        out.write(data)
