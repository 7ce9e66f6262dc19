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
from typing import Iterator, List, Optional, Sequence

from fsaudit.target import Target
from fsaudit_checks.apk.installed import identity_hex
from fsaudit_checks.manifest import pkginfo
from fsaudit_checks.manifest.archive import Member
from fsaudit_checks.manifest.entries import Package
from fsaudit_checks.manifest.pkginfo import READ_LIMIT, CacheError

CACHE_DIRS = (b"/etc/apk/cache", b"/var/cache/apk")


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


def package_members(target: Target, path: bytes, package: Package) -> Iterator[Member]:
    """The files of the `.apk` at `path` (inside `target`), streaming, once its `.PKGINFO` has shown
    that it is `package` at its version; signatures and control files are left out. Raises
    CacheError (an ArchiveError) or OSError."""
    with target.open(path, follow=False) as raw:
        if raw.read(3) == b"ADB":
            raise CacheError(f"{os.fsdecode(path)} is a v3 package, which this reader does not read")
        raw.seek(0)
        yield from pkginfo.members(raw, raw.st.st_size, path, package)


def read_file(target: Target, path: bytes, package: Package, wanted: bytes, limit: int = READ_LIMIT) -> bytes:
    """The packaged content of `wanted` (a path inside the system) from the cached `.apk` of
    `package`, at most `limit` bytes."""
    return pkginfo.read_member(package_members(target, path, package), path, wanted, limit)
