"""Package files whose `.PKGINFO` comes before their files (pacman's `.pkg.tar.*`, apk's `.apk`):
checking that it names the installed package and version, then streaming the files.

A package file is the tenant's like the rest of the image: it is read with the bounded reader of
`manifest.archive`, and no file of it is used before its `.PKGINFO` has shown which package it is."""

from __future__ import annotations

import os
from typing import BinaryIO, Dict, Iterable, Iterator

from fsaudit_checks.manifest.archive import ArchiveError, Member, read_members, read_small
from fsaudit_checks.manifest.entries import Package

PKGINFO_LIMIT = 1 << 20
# What read_file hands back whole; restoring streams instead.
READ_LIMIT = 64 << 20


class CacheError(ArchiveError):
    """A cached package file that cannot be used: damaged, of another package, or unreadable."""


def _pkginfo(data: bytes) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, equals, value = line.partition(" = ")
        if equals and not key.startswith("#"):
            values.setdefault(key.strip(), value.strip())
    return values


def members(raw: BinaryIO, size: int, path: bytes, package: Package) -> Iterator[Member]:
    """The files of the open package file `raw` (`path` in messages), streaming, once its `.PKGINFO`
    has shown that it is `package` at its version; the package's own metadata (`.PKGINFO`,
    `.SIGN.*`, `.MTREE`, `.INSTALL`, ...) is left out. Raises CacheError (an ArchiveError) or OSError."""
    info: Dict[str, str] | None = None
    for member in read_members(raw, size):
        top = member.path[1:]
        if top.startswith(b".") and b"/" not in top:
            if top == b".PKGINFO" and member.kind == "file" and info is None:
                info = _pkginfo(read_small(member, PKGINFO_LIMIT))
                if info.get("pkgname") != package.name or info.get("pkgver") != package.version:
                    raise CacheError(
                        f"{os.fsdecode(path)} holds {info.get('pkgname')} {info.get('pkgver')}, "
                        f"not {package.name} {package.version}"
                    )
            continue
        if info is None:
            raise CacheError(f"{os.fsdecode(path)} has no .PKGINFO before its files")
        yield member


def read_member(files: Iterable[Member], path: bytes, wanted: bytes, limit: int) -> bytes:
    """The content of `wanted` among the `files` of the package file `path`, at most `limit` bytes."""
    for member in files:
        if member.path != wanted:
            continue
        if member.fileobj is None or member.size > limit:
            raise CacheError(f"{os.fsdecode(wanted)} is not a regular file of at most {limit:,} bytes")
        return member.fileobj.read(member.size)
    raise CacheError(f"{os.fsdecode(path)} has no {os.fsdecode(wanted)}")
