"""Reading a package file's tar archive by streaming, bounded against hostile files.

Package files come from the audited system's cache (or `--archives`), so they may be damaged or made
hostile like anything else there. Every problem is an `ArchiveError`, never a crash, and nothing a
file claims decides how much is read into memory: extended tar headers (pax, GNU long names, which
tarfile reads whole) are refused beyond a sane size, the number of members is bounded, and the
decompressed stream may not grow beyond a generous multiple of the file's size (a decompression
bomb). The compression is recognised by its magic bytes, not by the file's name.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Iterator, Type

from fsaudit.bounded import CHUNK, Capped, decompressed_limit, zstd_stream

# A pax or GNU long-name header holds a few names and times; tarfile reads a claimed size whole.
MAX_EXTENDED_HEADER = 1 << 20
MAX_MEMBERS = 1_000_000
_EXTENDED_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_MAGIC = (
    (b"\x1f\x8b", "gz"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bz2"),
    (b"\x28\xb5\x2f\xfd", "zst"),
)


class ArchiveError(Exception):
    """A package file that cannot be read: damaged, hostile, or in a format this reader lacks."""


@dataclass
class Member:
    """One entry of a package archive; `fileobj` reads a regular file's bytes (else None).

    `path` is the path inside the installed system (`/usr/bin/x`); `link` a symlink's target, or a
    hard link's target as such a path."""

    path: bytes
    kind: str  # "file", "directory", "symlink", "hardlink", "other"
    size: int
    link: bytes
    fileobj: IO[bytes] | None
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int = 0


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extended headers are refused beyond a sane size instead of read whole, and
    whose sparse maps (which tarfile reads into a list as long as the archive claims) are refused:
    package files hold no sparse members."""

    def _proc_member(self, archive):
        if self.type in _EXTENDED_TYPES and not 0 <= self.size <= MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"an extended header claims {self.size:,} bytes")
        return super()._proc_member(archive)

    def _proc_sparse(self, archive):
        raise tarfile.HeaderError("a sparse member, which no package holds")

    def _proc_gnusparse_00(self, *args):
        raise tarfile.HeaderError("a sparse member, which no package holds")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def compression(head: bytes) -> str:
    """The compression the first bytes of a stream show ("" for none)."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return ""


@contextmanager
def decompressed(
    raw: IO[bytes], kind: str, error: Type[Exception] = ArchiveError, what: str = "a zstd archive"
) -> Iterator[IO[bytes]]:
    """The decompressed stream of `raw` for one compression ("gz", "xz", "bz2", "zst" or ""); a
    compression it cannot read raises `error` (a missing zstd says that `what` needs it)."""
    if kind == "zst":
        with zstd_stream(raw, error, what) as stream:
            yield stream
    elif kind == "xz":
        with lzma.LZMAFile(raw) as stream:
            yield stream
    elif kind == "gz":
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield stream
    elif kind == "bz2":
        with bz2.BZ2File(raw) as stream:
            yield stream
    elif kind == "":
        yield raw
    else:
        raise error(f"unknown compression {kind!r}")


def _errors() -> tuple:
    errors = (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return errors + (zstandard.ZstdError,)


def _why(error: BaseException) -> str:
    return f"damaged archive: {getattr(error, 'strerror', None) or error}"


class _Guarded(io.RawIOBase):
    """A member's reader whose decompression and archive errors raise `error`."""

    def __init__(self, fileobj, error: Type[Exception]):
        self.fileobj = fileobj
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.fileobj.read(len(buffer))
        except (ArchiveError, self.error):
            raise
        except _errors() as error:
            raise self.error(_why(error)) from error
        buffer[: len(data)] = data
        return len(data)


def guarded(fileobj: IO[bytes], error: Type[Exception] = ArchiveError) -> IO[bytes]:
    """A tar member's reader whose damage (a corrupt stream halfway through the member) raises
    `error` like the archive's own damage, instead of a decompressor's exception."""
    return io.BufferedReader(_Guarded(fileobj, error), CHUNK)


def inner_path(name: str, strip: bytes = b"") -> bytes:
    """The system path (`/usr/bin/x`) of an archive member name (`./usr/bin/x`, `usr/bin/x/`)."""
    raw = os.fsencode(name)
    while raw.startswith(b"./"):
        raw = raw[2:]
    if strip and raw.startswith(strip):
        raw = raw[len(strip) :]
    return b"/" + raw.strip(b"/")


def member_kind(info: tarfile.TarInfo) -> str:
    """What a tar entry is: "file", "directory", "symlink", "hardlink" or "other"."""
    if info.isreg():
        return "file"
    if info.isdir():
        return "directory"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, strip: bytes) -> Member:
    kind = member_kind(info)
    link = os.fsencode(info.linkname) if info.linkname else b""
    if kind == "hardlink":
        link = inner_path(info.linkname, strip)
    reader = guarded(tar.extractfile(info)) if kind == "file" else None
    return tar_member(info, inner_path(info.name, strip), link, reader)


def tar_member(info: tarfile.TarInfo, path: bytes, link: bytes, fileobj: IO[bytes] | None) -> Member:
    """The Member of the tar entry `info`; its path and link as the caller's package format reads
    the entry's names."""
    return Member(
        path,
        member_kind(info),
        info.size,
        link,
        fileobj,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        uname=info.uname,
        gname=info.gname,
        mtime=int(info.mtime),
    )


def read_members(raw: IO[bytes], size: int, strip: bytes = b"") -> Iterator[Member]:
    """Every entry of the (possibly compressed) tar archive `raw`, `size` bytes on the disk, in
    archive order and streaming: a member's bytes must be read before the next one is asked for.
    Every problem of the archive, also while a member is read, raises ArchiveError."""
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw, CHUNK)
    try:
        kind = compression(buffered.peek(8)[:8])
        with decompressed(buffered, kind) as stream:
            capped = Capped(stream, decompressed_limit(size), ArchiveError, "it")
            yield from _tar_members(io.BufferedReader(capped, CHUNK), strip)
    except ArchiveError:
        raise
    except _errors() as error:
        raise ArchiveError(_why(error)) from error


def _tar_members(stream: IO[bytes], strip: bytes) -> Iterator[Member]:
    with tarfile.open(
        fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape", tarinfo=BoundedTarInfo
    ) as tar:
        for count, info in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise ArchiveError(f"more than {MAX_MEMBERS:,} members")
            yield _member(tar, info, strip)


def read_small(member: Member, limit: int) -> bytes:
    """The bytes of a small member (a `.PKGINFO`), at most `limit` of them."""
    if member.fileobj is None:
        return b""
    return member.fileobj.read(limit)
