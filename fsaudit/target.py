"""The audited root (`/` or `--root DIR`) and safe, read-only ways to read it.

Every path a checker uses is a path *inside* the audited system (`/usr/bin/sed`). The Target
resolves it to a path on this machine, following symlinks the way the audited system would: an
absolute link in a mounted image points into the image, `..` never climbs out of the root, and
merged-/usr aliases (`/bin -> usr/bin`) work. Files are opened without following a final symlink,
without updating atime, without blocking on a FIFO, and only when they are regular files;
directories are listed without updating their atime either (the kernel does update a symlink's
atime whenever it is read, which no flag prevents). The primitives live in `fsaudit.reader`, which
the reading engine's worker processes run too.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Callable, Iterator, List, Tuple, Union

from fsaudit.model import display_path
from fsaudit.reader import (
    DIRECTORY_FLAGS,
    MAX_SYMLINKS,
    NotRegularFile,
    Resolver,
    file_kind,
    list_directory,
    open_noatime,
)

__all__ = ["MAX_SYMLINKS", "Entry", "NotRegularFile", "OpenFile", "Target", "file_kind"]
PathLike = Union[str, bytes]


class OpenFile(io.FileIO):
    """A regular file opened read-only on the target, with the `fstat` of its descriptor."""

    st: os.stat_result


def _fsencode(path: PathLike) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


class Entry:
    """One entry of a directory listing, used like os.DirEntry: `name`, `path` (on this machine),
    the type the directory gave without an lstat, and the lstat taken while listing or on first use."""

    __slots__ = ("name", "path", "_type", "_lstat")

    def __init__(self, name: bytes, path: bytes, kind: int, lstat=None):
        self.name = name
        self.path = path
        self._type = kind
        self._lstat = lstat

    def __repr__(self) -> str:
        return f"<Entry {self.name!r}>"

    def __fspath__(self) -> bytes:
        return self.path

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        if follow_symlinks:
            return os.stat(self.path)
        if isinstance(self._lstat, OSError):
            raise self._lstat
        if self._lstat is None:
            self._lstat = os.lstat(self.path)
        return self._lstat

    def _is(self, kind: int, follow_symlinks: bool) -> bool:
        if self._type and not (follow_symlinks and self._type == stat.S_IFLNK):
            return self._type == kind
        try:
            return stat.S_IFMT(self.stat(follow_symlinks).st_mode) == kind
        except OSError:
            return False

    def is_dir(self, follow_symlinks: bool = True) -> bool:
        return self._is(stat.S_IFDIR, follow_symlinks)

    def is_file(self, follow_symlinks: bool = True) -> bool:
        return self._is(stat.S_IFREG, follow_symlinks)

    def is_symlink(self) -> bool:
        return self._is(stat.S_IFLNK, False)

    def inode(self) -> int:
        return self.stat(follow_symlinks=False).st_ino


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
        self._resolver = Resolver(self.root)

    @property
    def root_text(self) -> str:
        return os.fsdecode(self.root) or "/"

    def __repr__(self) -> str:
        return f"Target({self.root_text!r})"

    # -- paths -------------------------------------------------------------------------------

    def host_path(self, path: PathLike) -> bytes:
        """`path` joined to the root as it is written, without resolving anything."""
        parts = [part for part in _fsencode(path).split(b"/") if part and part != b"."]
        return self.root + b"/" + b"/".join(parts)

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
        return self._resolver.resolve(_fsencode(path), follow)

    def directory_mode(self, path: PathLike) -> Tuple[bytes, int]:
        """(host path, mode) of `path` resolved as a directory (every symlink followed inside the
        root), the mode from the walk that resolved it: without a system call when the files inside
        it were resolved before. The mode is 0 where the walk did not see it: lstat the host path
        then. A symlink loop raises OSError(ELOOP)."""
        return self._resolver.directory_mode(_fsencode(path))

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
        fd = open_noatime(host)
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
        """The names in a directory, listed without updating its atime."""
        fd = open_noatime(self.resolve(path, follow=True), DIRECTORY_FLAGS)
        try:
            return [os.fsencode(name) for name in os.listdir(fd)]
        finally:
            os.close(fd)

    def walk(
        self,
        top: PathLike = b"/",
        onerror: Callable[[bytes, OSError], None] | None = None,
        prune: Callable[[bytes, Entry], bool] | None = None,
        max_depth: int = 256,
        stats: bool = False,
    ) -> Iterator[Tuple[bytes, List[Entry]]]:
        """Walk a tree below `top` without following symlinks: yields (inner dir path, entries).

        Entries are used like os.DirEntry (`name`, `path`, `is_dir(follow_symlinks=False)`, `stat(...)`);
        with `stats`, every entry is lstat'ed while its directory is open (faster than one by one
        later, for callers that look at every entry). Directories are listed without updating their
        atime. An unreadable directory is passed to `onerror` and skipped; `prune(inner_path, entry)`
        True keeps the walk out of that subdirectory. Depth is bounded.
        """
        start = self.resolve(top, follow=True)
        stack = [(start, 0)]
        while stack:
            host_dir, depth = stack.pop()
            inner = self.inner_path(host_dir)
            try:
                listing = list_directory(host_dir, stats)
            except OSError as error:
                if onerror:
                    onerror(inner, error)
                continue
            base = b"" if host_dir == b"/" else host_dir
            entries = [Entry(name, base + b"/" + name, kind, st) for name, kind, st in listing]
            yield inner, entries
            if depth >= max_depth:
                continue
            prefix = b"" if inner == b"/" else inner.rstrip(b"/")
            for entry in reversed(entries):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if prune and prune(prefix + b"/" + entry.name, entry):
                    continue
                stack.append((entry.path, depth + 1))

    def scan(self, host_top: bytes, *options, **keywords) -> Iterator[tuple]:
        """The tree below `host_top` walked at the reading engine's depth: `fsaudit.scan.scan_tree`
        with the inner path of `host_top` worked out here, and its other parameters as they are
        (start, end, settings, full, top_full, descend, max_depth, may_list). (inner path, host path,
        Listing or OSError) per directory, depth-first, every entry lstat'ed, only the entries changed
        in [start, end) and the subdirectories sent back unless `full`."""
        from fsaudit.scan import scan_tree

        yield from scan_tree(host_top, self.inner_path(host_top), *options, **keywords)
