"""The audited root (`/` or `--root DIR`) and safe, read-only ways to read it.

Every path a checker uses is a path *inside* the audited system (`/usr/bin/sed`). The Target
resolves it to a path on this machine, following symlinks the way the audited system would: an
absolute link in a mounted image points into the image, `..` never climbs out of the root, and
merged-/usr aliases (`/bin -> usr/bin`) work. Files are opened without following a final symlink,
without updating atime, without blocking on a FIFO, and only when they are regular files.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import Callable, Iterator, List, Tuple, Union

from fsaudit.model import display_path

PathLike = Union[str, bytes]
MAX_SYMLINKS = 40
_DIR_CACHE_LIMIT = 65536
_NOATIME = getattr(os, "O_NOATIME", 0)
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)

_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def file_kind(mode: int) -> str:
    """A word for the type of file `mode` describes ("FIFO", "directory", ...)."""
    for test, word in _KINDS:
        if test(mode):
            return word
    return "unknown file type"


class NotRegularFile(OSError):
    """Something other than a regular file stands where a file was to be read."""

    def __init__(self, path: bytes, mode: int):
        self.kind = file_kind(mode)
        self.mode = mode
        super().__init__(errno.EINVAL, f"{self.kind} where a regular file was expected", path)


class OpenFile(io.FileIO):
    """A regular file opened read-only on the target, with the `fstat` of its descriptor."""

    st: os.stat_result


def _fsencode(path: PathLike) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


def _components(path: bytes) -> List[bytes]:
    return [part for part in path.split(b"/") if part and part != b"."]


class Target:
    """The root being audited."""

    def __init__(self, root: PathLike = "/", drop_cache: bool | None = None):
        root_bytes = os.path.abspath(_fsencode(root))
        self.root: bytes = b"" if root_bytes == b"/" else root_bytes.rstrip(b"/")
        self.live = self.root == b""
        # Dropping cached pages only matters on the running system: a freshly mounted image has
        # nothing cached that its disk lost (DESIGN.md rule 6).
        self.drop_cache = self.live if drop_cache is None else drop_cache
        self.cache_drop_failures = 0
        self._dir_cache: dict = {}

    @property
    def root_text(self) -> str:
        return os.fsdecode(self.root) or "/"

    def __repr__(self) -> str:
        return f"Target({self.root_text!r})"

    # -- paths -------------------------------------------------------------------------------

    def host_path(self, path: PathLike) -> bytes:
        """`path` joined to the root as it is written, without resolving anything."""
        return self.root + b"/" + b"/".join(_components(_fsencode(path)))

    def inner_path(self, host_path: PathLike) -> bytes:
        """The path inside the audited system of a host path below the root."""
        host_path = _fsencode(host_path)
        if self.root and host_path == self.root:
            return b"/"
        if self.root and host_path.startswith(self.root + b"/"):
            return host_path[len(self.root) :]
        return host_path if host_path.startswith(b"/") else b"/" + host_path

    def display(self, path: PathLike) -> str:
        return display_path(_fsencode(path))[0]

    def resolve(self, path: PathLike, follow: bool = True) -> bytes:
        """The host path of `path`, with symlinks resolved inside the root.

        Every directory on the way is resolved; the last component only when `follow`. A component
        that does not exist ends resolution (opening the result then fails with ENOENT). A symlink
        loop raises OSError(ELOOP).
        """
        parts = _components(_fsencode(path))
        if not parts:
            return self.root or b"/"
        parent = self._resolve_dir(tuple(parts[:-1]))
        if parent == b"/":
            # The live root: its entries are /etc, not //etc.
            parent = b""
        if not follow:
            return parent + b"/" + parts[-1]
        return self._walk(parent, [parts[-1]], follow_last=True, hops=0)

    def _resolve_dir(self, parts: Tuple[bytes, ...]) -> bytes:
        cached = self._dir_cache.get(parts)
        if cached is None:
            cached = self._walk(self.root, list(parts), follow_last=True, hops=0)
            if len(self._dir_cache) >= _DIR_CACHE_LIMIT:
                self._dir_cache.clear()
            self._dir_cache[parts] = cached
        return cached

    def _walk(self, start: bytes, parts: List[bytes], follow_last: bool, hops: int) -> bytes:
        current = start
        pending = list(reversed(parts))
        while pending:
            name = pending.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                if len(current) > len(self.root):
                    current = current.rsplit(b"/", 1)[0]
                    if len(current) < len(self.root):
                        current = self.root
                continue
            candidate = current + b"/" + name
            if not pending and not follow_last:
                return candidate
            try:
                st = os.lstat(candidate)
            except OSError:
                # Missing or unreadable: the rest cannot be resolved; keep it literal.
                return candidate + b"".join(b"/" + part for part in reversed(pending))
            if not stat.S_ISLNK(st.st_mode):
                current = candidate
                continue
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", self.inner_path(candidate))
            link = os.readlink(candidate)
            if link.startswith(b"/"):
                current = self.root
            pending.extend(reversed(_components(link)))
        return current or b"/"

    # -- metadata ------------------------------------------------------------------------------

    def lstat(self, path: PathLike) -> os.stat_result:
        """lstat of `path` (its directories resolved, the last component not followed)."""
        return os.lstat(self.resolve(path, follow=False))

    def stat(self, path: PathLike) -> os.stat_result:
        """stat of `path` with every symlink resolved inside the root."""
        return os.lstat(self.resolve(path, follow=True))

    def exists(self, path: PathLike, follow: bool = False) -> bool:
        try:
            (self.stat if follow else self.lstat)(path)
        except OSError:
            return False
        return True

    def readlink(self, path: PathLike) -> bytes:
        return os.readlink(self.resolve(path, follow=False))

    # -- reading -------------------------------------------------------------------------------

    def open(self, path: PathLike, follow: bool = True) -> OpenFile:
        """Open a regular file read-only: no atime update, no hang on a FIFO, no final symlink.

        Raises NotRegularFile when something else stands there, OSError for the rest. When the
        target asks for it, the file's cached pages are dropped first so reads come from the disk.
        """
        return self.open_host(self.resolve(path, follow=follow))

    def open_host(self, host: bytes) -> OpenFile:
        """`open()` of a path already resolved with `resolve()` (callers that resolve to find
        duplicates need not resolve twice)."""
        fd = _open_noatime(host)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(self.inner_path(host), st.st_mode)
            if self.drop_cache:
                self._drop_cached_pages(fd)
            handle = OpenFile(fd, "rb", closefd=True)
        except BaseException:
            os.close(fd)
            raise
        handle.st = st
        return handle

    def _drop_cached_pages(self, fd: int) -> None:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            self.cache_drop_failures += 1

    def read_bytes(self, path: PathLike, limit: int = 64 << 20, follow: bool = True) -> bytes:
        """The content of a regular file, at most `limit` bytes (damaged files can be huge)."""
        with self.open(path, follow=follow) as handle:
            return handle.read(limit)

    def read_text(self, path: PathLike, limit: int = 64 << 20, errors: str = "surrogateescape") -> str:
        return self.read_bytes(path, limit).decode("utf-8", errors)

    def listdir(self, path: PathLike) -> List[bytes]:
        return os.listdir(self.resolve(path, follow=True))

    def walk(
        self,
        top: PathLike = b"/",
        onerror: Callable[[bytes, OSError], None] | None = None,
        prune: Callable[[bytes, os.DirEntry], bool] | None = None,
        max_depth: int = 256,
    ) -> Iterator[Tuple[bytes, List[os.DirEntry]]]:
        """Walk a tree below `top` without following symlinks: yields (inner dir path, entries).

        Directory entries come from `scandir` (their `stat(follow_symlinks=False)` is cached). An
        unreadable directory is passed to `onerror` and skipped; `prune(inner_path, entry)` True
        keeps the walk out of that subdirectory. Depth is bounded.
        """
        start = self.resolve(top, follow=True)
        stack = [(start, 0)]
        while stack:
            host_dir, depth = stack.pop()
            inner = self.inner_path(host_dir)
            try:
                with os.scandir(host_dir) as scan:
                    entries = list(scan)
            except OSError as error:
                if onerror:
                    onerror(inner, error)
                continue
            yield inner, entries
            if depth >= max_depth:
                continue
            for entry in reversed(entries):
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if not is_dir:
                    continue
                child = (inner.rstrip(b"/") + b"/" + entry.name) if inner != b"/" else b"/" + entry.name
                if prune and prune(child, entry):
                    continue
                stack.append(
                    (entry.path if isinstance(entry.path, bytes) else os.fsencode(entry.path), depth + 1)
                )


def _open_noatime(host: bytes) -> int:
    if _NOATIME:
        try:
            return os.open(host, _OPEN_FLAGS | _NOATIME)
        except PermissionError:
            # O_NOATIME is refused on files we do not own unless we hold CAP_FOWNER.
            pass
    return os.open(host, _OPEN_FLAGS)
