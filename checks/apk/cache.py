"""The package files apk keeps in its cache (`/etc/apk/cache`, usually a link to `/var/cache/apk`),
named `NAME-VERSION.HASH8.apk` after the package's identity hash: finding the one of an installed
package, and reading files from it, so a repair of an image can take the bytes from the image itself
(each to be checked against the database's digest before use).

A v2 `.apk` is three gzip streams one after the other (signature, control with `.PKGINFO`, data), each
a tar archive without its end marker, so read as one stream they are one tar archive."""

from __future__ import annotations

import gzip
import os
import tarfile
from contextlib import contextmanager
from typing import IO, Dict, Iterator, Optional, Tuple

from fsaudit.target import Target
from fsaudit_checks.apk.installed import identity_hex
from fsaudit_checks.manifest.entries import Package

CACHE_DIRS = (b"/etc/apk/cache", b"/var/cache/apk")
MEMBER_LIMIT = 4 << 30
PKGINFO_LIMIT = 1 << 20


class CacheError(Exception):
    """A cached package file that cannot be used: damaged, of another package, or unreadable."""


def find(target: Target, package: Package) -> Optional[bytes]:
    """The cached `.apk` of exactly this package version (path inside the root), or None."""
    digest = identity_hex(package.identity.get("checksum", ""))
    if digest is None or not package.version:
        return None
    name = os.fsencode(f"{package.name}-{package.version}.{digest[:8]}.apk")
    for directory in CACHE_DIRS:
        candidate = directory + b"/" + name
        try:
            if target.stat(candidate).st_size > 0:
                return candidate
        except OSError:
            continue
    return None


@contextmanager
def _tar(target: Target, path: bytes):
    with target.open(path) as raw:
        if raw.read(3) == b"ADB":
            raise CacheError(f"{os.fsdecode(path)} is a v3 package, which this reader does not read")
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw) as stream, _stream_tar(stream) as tar:
            yield tar


def _stream_tar(stream) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")


def _pkginfo(data: bytes) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, equals, value = line.partition(" = ")
        if equals and not key.startswith("#"):
            values.setdefault(key.strip(), value.strip())
    return values


def members(target: Target, path: bytes) -> Iterator[Tuple[bytes, tarfile.TarInfo, Optional[IO], Dict]]:
    """(path inside the system, tar member, reader of a regular file's content, the `.PKGINFO` read
    so far) for every file the package installs."""
    info: Dict[str, str] = {}
    try:
        with _tar(target, path) as tar:
            for member in tar:
                name = os.fsencode(member.name)
                if name == b".PKGINFO" and member.isfile():
                    reader = tar.extractfile(member)
                    info.update(_pkginfo(reader.read(PKGINFO_LIMIT) if reader else b""))
                    continue
                if not name or name.startswith(b".SIGN.") or (name.startswith(b".") and b"/" not in name):
                    continue
                reader = tar.extractfile(member) if member.isfile() else None
                yield b"/" + name.strip(b"/"), member, reader, info
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise CacheError(f"{os.fsdecode(path)} is damaged: {error}") from None


def read_file(
    target: Target, path: bytes, package: Package, wanted: bytes, limit: int = MEMBER_LIMIT
) -> bytes:
    """The packaged content of `wanted` (a path inside the system) from the cached `.apk` of
    `package`, after checking that its `.PKGINFO` (which precedes the data) names that package."""
    for name, member, reader, info in members(target, path):
        if info.get("pkgname") != package.name or info.get("pkgver") != package.version:
            raise CacheError(
                f"{os.fsdecode(path)} holds {info.get('pkgname')} {info.get('pkgver')}, "
                f"not {package.name} {package.version}"
            )
        if name != wanted:
            continue
        if reader is None or member.size > limit:
            raise CacheError(f"{os.fsdecode(wanted)} is not a regular file of at most {limit:,} bytes")
        return reader.read(member.size)
    raise CacheError(f"{os.fsdecode(path)} has no {os.fsdecode(wanted)}")
