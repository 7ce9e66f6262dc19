"""The package files pacman keeps in its cache (`/var/cache/pacman/pkg/NAME-VERSION-ARCH.pkg.tar.*`):
finding the one of an installed package, and reading its files by streaming, so that repair can take
the bytes from the image itself (each checked against the database's sha256 before it is written).

A package file is the tenant's like the rest of the image: it is read with the bounded reader of
`manifest.archive`, and its `.PKGINFO`, which makepkg puts before the files, must name the installed
package and version before any file of it is used."""

from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence

from fsaudit.target import Target
from fsaudit_checks.manifest import pkginfo
from fsaudit_checks.manifest.archive import Member
from fsaudit_checks.manifest.entries import Package
from fsaudit_checks.manifest.pkginfo import READ_LIMIT, CacheError  # noqa: F401 (callers catch cache.CacheError)
from fsaudit_checks.pacman.conf import Settings

SUFFIXES = (b".pkg.tar.zst", b".pkg.tar.xz", b".pkg.tar.gz", b".pkg.tar.bz2", b".pkg.tar")


def file_names(package: Package) -> List[bytes]:
    """The names pacman gives the package file of exactly this version (`NAME-VERSION-ARCH.pkg.tar.*`)."""
    if not package.version:
        return []
    names = []
    for arch in dict.fromkeys((package.architecture or "any", "any")):
        stem = os.fsencode(f"{package.name}-{package.version}-{arch}")
        names.extend(stem + suffix for suffix in SUFFIXES)
    return names


def candidates(target: Target, directories: Sequence[bytes], package: Package) -> List[bytes]:
    """Every regular, non-empty package file of exactly this package in `directories` (paths inside
    `target`). Not followed: a symlink there is not a file pacman left."""
    found = []
    for directory in directories:
        for name in file_names(package):
            candidate = directory.rstrip(b"/") + b"/" + name
            try:
                st = target.lstat(candidate)
            except OSError:
                continue
            if st.st_size > 0 and (st.st_mode & 0o170000) == 0o100000:
                found.append(candidate)
    return found


def find(target: Target, settings: Settings, package: Package) -> Optional[bytes]:
    """The cached package file of exactly this package, version and architecture (path inside the
    root), or None."""
    found = candidates(target, settings.cachedirs, package)
    return found[0] if found else None


def package_members(target: Target, path: bytes, package: Package) -> Iterator[Member]:
    """The files of the package file `path` (inside `target`), streaming, once its `.PKGINFO` has
    shown that it is `package` at its version; the package's own metadata (`.PKGINFO`, `.MTREE`,
    `.INSTALL`, ...) is left out. Raises CacheError (an ArchiveError) or OSError."""
    with target.open(path, follow=False) as raw:
        yield from pkginfo.members(raw, raw.st.st_size, path, package)


def read_file(target: Target, path: bytes, package: Package, wanted: bytes, limit: int = READ_LIMIT) -> bytes:
    """The packaged content of `wanted` (a path inside the system) from the cached package file of
    `package`, at most `limit` bytes."""
    return pkginfo.read_member(package_members(target, path, package), path, wanted, limit)
