"""The package files apk keeps in its cache (`/etc/apk/cache`, usually a link to `/var/cache/apk`),
named `NAME-VERSION.HASH8.apk` after the package's identity hash: finding the one of an installed
package, and reading its files by streaming, so that repair can take the bytes from the image itself
(each checked against the database's digest before it is written).

A v2 `.apk` is three gzip streams one after the other (signature, control with `.PKGINFO`, data), each
a tar archive without its end marker, so read as one stream they are one tar archive. It is read with
the bounded reader of `manifest.archive`, and its `.PKGINFO`, which precedes the data, must name the
installed package and version before any file of it is used."""

from __future__ import annotations

import os
from typing import Dict, Iterator, List, Optional, Sequence

from fsaudit.target import Target
from fsaudit_checks.apk.installed import identity_hex
from fsaudit_checks.manifest.archive import ArchiveError, Member, read_members, read_small
from fsaudit_checks.manifest.entries import Package

CACHE_DIRS = (b"/etc/apk/cache", b"/var/cache/apk")
PKGINFO_LIMIT = 1 << 20
# What read_file hands back whole; restoring streams instead.
READ_LIMIT = 64 << 20


class CacheError(ArchiveError):
    """A cached package file that cannot be used: damaged, of another package, or unreadable."""


def file_name(package: Package) -> Optional[bytes]:
    """The name apk gives the cached file of exactly this package (`NAME-VERSION.HASH8.apk`)."""
    digest = identity_hex(package.identity.get("checksum", ""))
    if digest is None or not package.version:
        return None
    return os.fsencode(f"{package.name}-{package.version}.{digest[:8]}.apk")


def candidates(target: Target, directories: Sequence[bytes], package: Package) -> List[bytes]:
    """Every non-empty regular file of this package's cache name in `directories` (paths inside
    `target`; the directories' own symlinks are followed inside it, the file's is not)."""
    name = file_name(package)
    if name is None:
        return []
    found: List[bytes] = []
    seen = set()
    for directory in directories:
        candidate = directory.rstrip(b"/") + b"/" + name
        try:
            st = target.lstat(candidate)
            # /etc/apk/cache is usually a link to /var/cache/apk: the same file counts once.
            host = target.resolve(candidate, follow=False)
        except OSError:
            continue
        if st.st_size > 0 and (st.st_mode & 0o170000) == 0o100000 and host not in seen:
            seen.add(host)
            found.append(candidate)
    return found


def find(target: Target, package: Package) -> Optional[bytes]:
    """The cached `.apk` of exactly this package version (path inside the root), or None."""
    found = candidates(target, CACHE_DIRS, package)
    return found[0] if found else None


def _pkginfo(data: bytes) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, equals, value = line.partition(" = ")
        if equals and not key.startswith("#"):
            values.setdefault(key.strip(), value.strip())
    return values


def package_members(target: Target, path: bytes, package: Package) -> Iterator[Member]:
    """The files of the `.apk` at `path` (inside `target`), streaming, once its `.PKGINFO` has shown
    that it is `package` at its version; signatures and control files are left out. Raises
    CacheError (an ArchiveError) or OSError."""
    with target.open(path, follow=False) as raw:
        if raw.read(3) == b"ADB":
            raise CacheError(f"{os.fsdecode(path)} is a v3 package, which this reader does not read")
        raw.seek(0)
        info: Dict[str, str] | None = None
        for member in read_members(raw, raw.st.st_size):
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


def read_file(target: Target, path: bytes, package: Package, wanted: bytes, limit: int = READ_LIMIT) -> bytes:
    """The packaged content of `wanted` (a path inside the system) from the cached `.apk` of
    `package`, at most `limit` bytes."""
    for member in package_members(target, path, package):
        if member.path != wanted:
            continue
        if member.fileobj is None or member.size > limit:
            raise CacheError(f"{os.fsdecode(wanted)} is not a regular file of at most {limit:,} bytes")
        return member.fileobj.read(member.size)
    raise CacheError(f"{os.fsdecode(path)} has no {os.fsdecode(wanted)}")
