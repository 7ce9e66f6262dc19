"""Reading `.deb` files (an ar archive holding data.tar.{gz,xz,bz2,zst,}) by streaming, in pure Python.

The `.deb` files come from the audited system's apt cache, so they are read through the Target and
may be damaged or made hostile like anything else there: every problem is a `DebError`, never a
crash, and what a file claims never decides how much is read into memory. The bounds are those of
every package file (`manifest.archive` for tar headers: extended headers bounded, sparse maps
refused; `fsaudit.bounded` for the decompression cap and zstd), so a bound is mended in one place.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import tarfile
from contextlib import contextmanager
from typing import IO, Dict, Iterator, Set, Tuple
from urllib.parse import unquote

from fsaudit.bounded import Capped, Window, decompressed_limit
from fsaudit.target import Target
from fsaudit_checks.manifest.archive import (
    BoundedTarInfo,
    Member,
    decompressed,
    guarded,
    member_kind,
    tar_member,
)

ARCHIVES = b"/var/cache/apt/archives"
_AR_MAGIC = b"!<arch>\n"
_MAX_MEMBERS = 16
_CHUNK = 1 << 20


class DebError(Exception):
    """A .deb that cannot be read (damaged, unknown compression, missing decompressor)."""


def _ar_members(handle) -> Iterator[Tuple[str, int]]:
    """(name, size) of each ar member, leaving `handle` at the start of its content."""
    if handle.read(8) != _AR_MAGIC:
        raise DebError("not a .deb (no ar archive header)")
    offset = 8
    for _ in range(_MAX_MEMBERS):
        header = handle.read(60)
        if not header:
            return
        if len(header) != 60 or header[58:60] != b"`\n":
            raise DebError("damaged ar member header")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as error:
            raise DebError("damaged ar member size") from error
        start = offset + 60
        yield name, size
        offset = start + size + (size & 1)
        handle.seek(offset)


@contextmanager
def _data_tar(target: Target, path: bytes):
    with target.open(path) as handle:
        for name, size in _ar_members(handle):
            if not name.startswith("data.tar"):
                continue
            raw = io.BufferedReader(Window(handle, size, _cut_short), _CHUNK)
            kind = name[len("data.tar") :].lstrip(".")
            try:
                with decompressed(raw, kind, DebError, "data.tar.zst") as stream:
                    capped = Capped(stream, decompressed_limit(size), DebError, "the data archive")
                    with tarfile.open(
                        fileobj=io.BufferedReader(capped, _CHUNK),
                        mode="r|",
                        encoding="utf-8",
                        errors="surrogateescape",
                        tarinfo=BoundedTarInfo,
                    ) as tar:
                        yield tar
            except (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError) as error:
                if isinstance(error, OSError) and not _from_archive(error):
                    raise
                raise DebError(f"damaged data archive: {error}") from error
            return
    raise DebError("the .deb has no data archive")


def _cut_short() -> DebError:
    return DebError("the .deb ends in the middle of its data archive")


def _from_archive(error: OSError) -> bool:
    # Decompressors raise OSError subclasses (gzip.BadGzipFile, lzma.LZMAError is not one) for
    # damaged data; a plain read error of the file itself is an OSError with an errno.
    return error.errno is None


def members(target: Target, path: bytes) -> Iterator[Member]:
    """Every entry of the .deb's data archive, in archive order. Raises DebError, OSError."""
    with _data_tar(target, path) as tar:
        for info in tar:
            name = os.fsencode(info.name)
            name = b"/" + name.lstrip(b".").lstrip(b"/") if name not in (b".", b"./") else b"/"
            name = name.rstrip(b"/") or b"/"
            kind = member_kind(info)
            link = os.fsencode(info.linkname) if info.linkname else b""
            if kind == "hardlink":
                link = b"/" + link.lstrip(b".").lstrip(b"/")
            fileobj = guarded(tar.extractfile(info), DebError) if kind == "file" else None
            yield tar_member(info, name, link, fileobj)


def md5sums(
    target: Target, path: bytes, wanted: Set[bytes] | None = None
) -> Dict[bytes, Tuple[str, str | None]]:
    """Path -> (kind, md5 of a regular file or None) for the .deb's data archive, hashing only the
    `wanted` paths when given. A hard link counts as a regular file with its target's md5 (None
    when its target was not hashed)."""
    result: Dict[bytes, Tuple[str, str | None]] = {}
    for member in members(target, path):
        if member.kind == "file":
            digest = _md5(member.fileobj) if wanted is None or member.path in wanted else None
            result[member.path] = ("file", digest)
        elif member.kind == "hardlink":
            result[member.path] = ("file", result.get(member.link, ("file", None))[1])
        else:
            result[member.path] = (member.kind, None)
    return result


def _md5(fileobj: IO[bytes]) -> str:
    digest = hashlib.md5()
    while True:
        chunk = fileobj.read(_CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def cache_name(name: str, version: str, architecture: str) -> bytes:
    """The file name apt gives a downloaded package: `name_version_arch.deb`, with `:` as `%3a`."""
    return f"{name}_{version.replace(':', '%3a')}_{architecture}.deb".encode("utf-8", "surrogateescape")


def parse_cache_name(filename: bytes) -> Tuple[str, str, str] | None:
    """(name, version, architecture) from an apt cache file name, or None."""
    if not filename.endswith(b".deb"):
        return None
    parts = filename[: -len(b".deb")].decode("utf-8", "surrogateescape").split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], unquote(parts[1]), parts[2]
