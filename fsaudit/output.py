"""Writing fsaudit's own files (reports, baselines, fleet results) so that nobody else can steer them.

fsaudit runs as root and is often told to write into directories other users can write (/tmp, a
shared incident directory, a textfile collector's directory). A file is therefore never opened at a
name someone could predict: it is written to a fresh temporary file in the same directory, created
with `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name (mkstemp), fsync'ed, and renamed over the final
name. The rename replaces whatever stood there (a planted symlink included) instead of following it,
and a reader never sees half a file. Devices and pipes (`/dev/null`, `/dev/stdout`, a FIFO a monitoring
agent reads) are written directly, but only when no other user could have put them there.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from contextlib import contextmanager
from typing import IO, Iterator

# Temporary files are `.NAME.<random>.tmp` beside NAME: hidden, and recognisable as leftovers.
TEMPORARY_SUFFIX = ".tmp"
_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def trusted_directory(path: str) -> bool:
    """Whether only root or this user can create or replace entries in directory `path` (owned by
    one of them, writable by nobody else): a symlink or device found there was put there by them."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _where(path: str) -> tuple[str, bool]:
    """(the path to write, whether to write it directly rather than replace it).

    A device, FIFO or socket is written directly, and a symlink followed, only when it stands in a
    directory no other user can write: `/dev/null`, `/dev/stdout`, an administrator's link. Anywhere
    else what stands at `path` is replaced by the new file, never followed or written into."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path, False
    if stat.S_ISREG(st.st_mode):
        return path, False
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if not trusted_directory(os.path.dirname(os.path.abspath(path))):
        return path, False
    if not stat.S_ISLNK(st.st_mode):
        return path, True
    try:
        followed = os.stat(path)
    except FileNotFoundError:
        return path, False
    if stat.S_ISDIR(followed.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if not stat.S_ISREG(followed.st_mode) or _descriptor_link(path):
        return path, True  # a device or pipe, or one of this process's descriptors (/dev/stdout)
    return os.path.realpath(path), False


def _descriptor_link(path: str) -> bool:
    """Whether the symlinks from `path` lead through /proc (/dev/stdout -> /proc/self/fd/1): an open
    descriptor, to be written as it is, not replaced."""
    for _ in range(40):
        if os.path.realpath(os.path.dirname(path)).startswith("/proc/"):
            return True
        try:
            link = os.readlink(path)
        except OSError:
            return False
        path = os.path.normpath(os.path.join(os.path.dirname(path), link))
    return False


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem syncs directories; the file itself is synced
    finally:
        os.close(fd)


@contextmanager
def output_file(path: str, mode: str = "w") -> Iterator[IO]:
    """Open `path` for writing (`mode` "w" for text, "wb" for bytes), safely against other users
    of its directory (see the module's docstring). The file is complete under its final name only
    when the block ends without an exception; otherwise nothing replaces what was there."""
    binary = "b" in mode
    path, direct = _where(path)
    if direct:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC)
        with _wrap(fd, binary) as handle:
            yield handle
        return
    import tempfile  # here: a report written to stdout does not pay for it (4 ms of every start)

    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=TEMPORARY_SUFFIX, dir=directory
    )
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide a report from its readers
        with _wrap(fd, binary) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _sync_directory(directory)


def _wrap(fd: int, binary: bool) -> IO:
    raw = io.FileIO(fd, "w", closefd=True)
    buffered = io.BufferedWriter(raw, buffer_size=1 << 20)
    return buffered if binary else io.TextIOWrapper(buffered, encoding="utf-8", newline="")


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` as `output_file` does (OSError when it cannot be written)."""
    with output_file(path, "wb") as handle:
        handle.write(data)
