"""Writing restored files into a mounted image without ever leaving it.

Every path is resolved from a descriptor of the image's root, one component at a time, each opened
with O_NOFOLLOW: a symlink in the image is followed the way the image's own system would follow it
(an absolute link starts again at the image's root, `..` never climbs above it), so no link planted
in the image can make repair write on the host. A file is written to an unpredictable temporary
name beside its destination (O_CREAT|O_EXCL|O_NOFOLLOW), checked, given its owner, mode and mtime,
fsync'ed, and only then renamed over the destination: an interrupted repair leaves the old file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Callable, Dict, Iterable, Iterator, List, Tuple

from fsaudit.repair import Outcome, Section, Step, Stop
from fsaudit.target import Target, file_kind

MAX_SYMLINKS = 40
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ACCOUNTS_LIMIT = 16 << 20
_CHUNK = 1 << 20


def _follow(fds: List[int], names: List[bytes], link_name: bytes) -> List[bytes]:
    """The components of the symlink `link_name` in the directory `fds[-1]`; an absolute link goes back
    to the image's root first (`fds` and `names` keep only the root)."""
    link = os.readlink(link_name, dir_fd=fds[-1])
    if link.startswith(b"/"):
        while len(fds) > 1:
            os.close(fds.pop())
        names.clear()
    return link.split(b"/")


class ImageError(Exception):
    """A path of the image that cannot be written as packaged, and why (in words for the operator)."""


@dataclass(frozen=True)
class Meta:
    """Owner, permission bits and modification time to give a restored path."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int | None = None


# What a missing parent directory gets, when the package file says nothing about it.
DEFAULT_DIRECTORY = Meta(0o755)


def _name_ok(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def _split(path: bytes) -> Tuple[List[bytes], bytes]:
    parts = [part for part in path.split(b"/") if part]
    if not parts or not all(_name_ok(part) for part in parts):
        raise ImageError(f"{os.fsdecode(path)} is not a normal absolute path")
    return parts[:-1], parts[-1]


class Image:
    """A mounted system's root, open for restoring files into it."""

    def __init__(self, root: str):
        self.root = root
        self.root_fd = os.open(root, _DIRECTORY)

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- resolving inside the root ---------------------------------------------------------------

    def directory(self, parts: List[bytes], create: Callable[[bytes], Meta] | None = None) -> int:
        """A descriptor of the directory at `parts` (inside the image), symlinks followed inside the
        image; a missing directory is created with `create(its path)`'s metadata, when given."""
        fds = [os.dup(self.root_fd)]
        names: List[bytes] = []
        pending = list(reversed(parts))
        hops = 0
        try:
            while pending:
                name = pending.pop()
                if name in (b"", b"."):
                    continue
                if name == b"..":
                    if len(fds) > 1:
                        os.close(fds.pop())
                        names.pop()
                    continue
                try:
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if create is None:
                        raise ImageError(f"{_shown(names, name)} does not exist") from None
                    fds.append(self._make_directory(fds[-1], name, create(_joined(names, name))))
                    names.append(name)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise ImageError(f"{_shown(names, name)}: too many levels of symbolic links")
                    pending.extend(reversed(_follow(fds, names, name)))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise ImageError(f"{_shown(names, name)} is a {file_kind(st.st_mode)}, not a directory")
                # O_NOFOLLOW: had it become a symlink since the stat, the open fails instead of following.
                fds.append(os.open(name, _DIRECTORY, dir_fd=fds[-1]))
                names.append(name)
            return fds.pop()
        except OSError as error:
            raise ImageError(f"{_shown(names, b'')}: {error.strerror or error}") from None
        finally:
            for fd in fds:
                os.close(fd)

    def _make_directory(self, parent: int, name: bytes, meta: Meta) -> int:
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIRECTORY, dir_fd=parent)
        try:
            _set_meta(fd, meta)
        except OSError:
            os.close(fd)
            raise
        return fd

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def _parent(self, path: bytes, parents: Callable[[bytes], Meta]) -> Iterator[Tuple[int, bytes]]:
        """(descriptor of `path`'s directory, its last component); a system error while writing there
        becomes an ImageError naming `path`."""
        directories, name = _split(path)
        parent = self.directory(directories, create=parents)
        try:
            yield parent, name
        except OSError as error:
            raise ImageError(f"{os.fsdecode(path)}: {error.strerror or error}") from None
        finally:
            os.close(parent)

    def write_file(
        self,
        path: bytes,
        chunks: Iterable[bytes],
        meta: Meta,
        check: Callable[[], str],
        parents: Callable[[bytes], Meta] = lambda path: DEFAULT_DIRECTORY,
        keep_old_as: bytes | None = None,
    ) -> None:
        """Write `chunks` as the regular file `path`, if `check()` (called after the last chunk)
        returns '' (else it says why the content is wrong, and nothing is changed). With
        `keep_old_as`, an existing file is first renamed to that name, in the same directory."""
        with self._parent(path, parents) as (parent, name):
            temporary = _temporary_name(name)
            fd = os.open(temporary, _NEW_FILE, 0o600, dir_fd=parent)
            try:
                _write_all(fd, chunks)
                problem = check()
                if problem:
                    raise ImageError(problem)
                _set_meta(fd, meta)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                _unlink_quietly(temporary, parent)
                raise
            os.close(fd)
            self._put_in_place(parent, temporary, name, path, keep_old_as)

    def write_symlink(
        self,
        path: bytes,
        target: bytes,
        meta: Meta,
        parents: Callable[[bytes], Meta] = lambda path: DEFAULT_DIRECTORY,
    ) -> None:
        """Make `path` the symbolic link to `target` (a link in the image points into the image)."""
        with self._parent(path, parents) as (parent, name):
            temporary = _temporary_name(name)
            os.symlink(target, temporary, dir_fd=parent)
            try:
                os.chown(temporary, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
                if meta.mtime is not None:
                    os.utime(temporary, ns=(meta.mtime * 10**9,) * 2, dir_fd=parent, follow_symlinks=False)
            except BaseException:
                _unlink_quietly(temporary, parent)
                raise
            self._put_in_place(parent, temporary, name, path, None)

    def make_directory(
        self, path: bytes, meta: Meta, parents: Callable[[bytes], Meta] = lambda path: DEFAULT_DIRECTORY
    ) -> None:
        """Make the directory `path`, or give the one there the packaged owner and mode."""
        directories, name = _split(path)
        fd = self.directory(
            directories + [name], create=lambda where: meta if where == path else parents(where)
        )
        try:
            _set_meta(fd, meta)
        except OSError as error:
            raise ImageError(f"{os.fsdecode(path)}: {error.strerror or error}") from None
        finally:
            os.close(fd)

    def _put_in_place(self, parent: int, temporary: bytes, name: bytes, path: bytes, keep_old_as) -> None:
        try:
            if keep_old_as is not None:
                try:
                    os.rename(name, keep_old_as, src_dir_fd=parent, dst_dir_fd=parent)
                except FileNotFoundError:
                    pass
            os.rename(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as error:
            _unlink_quietly(temporary, parent)
            if error.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise ImageError(
                    f"{os.fsdecode(path)}: a directory stands where the package has a file; move it away, "
                    "then run repair again"
                ) from None
            raise
        os.fsync(parent)


def restore_each(
    section: Section, say: Callable[[str], None], stop: Stop, restore: Callable[[Step], List[str]]
) -> Outcome:
    """Restore the section's steps one after another, `restore(step)` giving the problems (one per
    path not restored); a stop request leaves the rest, and a failed step shows its first three."""
    outcome = Outcome()
    for number, step in enumerate(section.steps, 1):
        if stop.requested:
            outcome.left.append(step)
            continue
        say(f"restoring {step.label} ({number}/{len(section.steps)}) from {step.source}")
        problems = restore(step)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            outcome.failed.append((step, "; ".join(problems[:3]) + more))
        else:
            outcome.done.append(step)
    return outcome


class Verified:
    """The chunks of a package file's copy of a path, hashed as they pass to `Image.write_file`; its
    `problem()`, called after the last chunk, refuses the copy unless the digest is the one the
    package database records. `matches(actual, expected)` compares (exactly by default); `called`
    is how the refusal names the digest ("MD5")."""

    def __init__(
        self,
        fileobj: IO[bytes],
        algorithm: str,
        expected: str,
        matches: Callable[[str, str], bool] = str.__eq__,
        called: str = "digest",
    ):
        self.fileobj = fileobj
        self.expected = expected
        self.matches = matches
        self.called = called
        self.digest = hashlib.new(algorithm)

    def chunks(self) -> Iterator[bytes]:
        while True:
            chunk = self.fileobj.read(_CHUNK)
            if not chunk:
                return
            self.digest.update(chunk)
            yield chunk

    def problem(self) -> str:
        if self.matches(self.digest.hexdigest(), self.expected):
            return ""
        return (
            f"the package file's copy does not have the {self.called} the package database records: "
            "not written"
        )


def _set_meta(fd: int, meta: Meta) -> None:
    # chown before chmod: changing the owner clears setuid and setgid bits.
    os.fchown(fd, meta.uid, meta.gid)
    os.fchmod(fd, meta.mode & 0o7777)
    if meta.mtime is not None:
        os.utime(fd, ns=(meta.mtime * 10**9,) * 2)


def _write_all(fd: int, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _temporary_name(name: bytes) -> bytes:
    return b"." + name[:200] + b".fsaudit-" + secrets.token_hex(8).encode()


def _unlink_quietly(name: bytes, parent: int) -> None:
    try:
        os.unlink(name, dir_fd=parent)
    except OSError:
        pass


def _joined(names: List[bytes], name: bytes) -> bytes:
    return b"/" + b"/".join([*names, name])


def _shown(names: List[bytes], name: bytes) -> str:
    return os.fsdecode(_joined(names, name) if name else b"/" + b"/".join(names))


class Accounts:
    """User and group names of the image (its own /etc/passwd and /etc/group), as ids there."""

    def __init__(self, target: Target):
        self.users = self._read(target, "/etc/passwd")
        self.groups = self._read(target, "/etc/group")

    @staticmethod
    def _read(target: Target, path: str) -> Dict[str, int]:
        ids = {"root": 0}
        try:
            text = target.read_text(path, limit=ACCOUNTS_LIMIT)
        except OSError:
            return ids
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[2].isdigit():
                ids.setdefault(fields[0], int(fields[2]))
        return ids

    def uid(self, name: str, fallback: int) -> int:
        return self.users.get(name, fallback) if name else fallback

    def gid(self, name: str, fallback: int) -> int:
        return self.groups.get(name, fallback) if name else fallback
