"""Portage's binary packages (`PKGDIR`, by default `/var/cache/binpkgs`): finding the one of an
installed package, and reading its files by streaming, so that repair of an image can take the bytes
from the image itself (each checked against the md5 CONTENTS records before it is written).

Two formats, both read with the bounded reader of `manifest.archive`:
- XPAK (`CAT/PF.tbz2`, or `CAT/PN/PF-N.xpak` with binpkg-multi-instance): a compressed tar of the
  image, then the XPAK metadata segment (`XPAKPACK` index and data `XPAKSTOP`), its length as a
  big-endian u32, and `STOP`;
- GPKG (`CAT/PF.gpkg.tar`, `CAT/PN/PF-N.gpkg.tar`): a plain tar holding `DIR/gpkg-1`,
  `DIR/metadata.tar.COMP` (`metadata/CATEGORY`, `metadata/PF`, ...) and `DIR/image.tar.COMP`
  (`image/usr/bin/...`).

Either way the package's own metadata (CATEGORY and PF) must name the installed package before any
file of it is used. A build of the same version with other USE flags holds other bytes: the md5 check
refuses those files, and repair tries the next package file.
"""

from __future__ import annotations

import io
import os
import re
import struct
from typing import Dict, Iterator, List, Sequence

from fsaudit.bounded import Window
from fsaudit.target import Target
from fsaudit_checks.manifest.archive import CHUNK, ArchiveError, Member, read_members, read_small

PKGDIRS = (b"/var/cache/binpkgs", b"/usr/portage/packages")
MAKE_CONF = (b"/etc/portage/make.conf", b"/etc/make.conf")
CONF_LIMIT = 1 << 20
XPAK_LIMIT = 16 << 20
XPAK_ENTRIES = 4096
METADATA_LIMIT = 1 << 20
MAX_INSTANCES = 1000
_PKGDIR = re.compile(rb"""^\s*(?:export\s+)?PKGDIR=["']?(/[^"'\s#]*)""", re.M)
_INSTANCE = re.compile(rb"^-[0-9]{1,9}\.(?:xpak|gpkg\.tar)$")


class BinpkgError(ArchiveError):
    """A binary package that cannot be used: damaged, of another package, or in another format."""


def pkgdirs(target: Target) -> List[bytes]:
    """Where the audited system keeps binary packages: make.conf's PKGDIR, then the defaults."""
    found: List[bytes] = []
    for path in MAKE_CONF:
        try:
            # make.conf may be a directory of files, read in name order.
            texts = [_read(target, path + b"/" + name) for name in sorted(target.listdir(path))[:256]]
        except OSError:
            texts = [_read(target, path)]
        for text in texts:
            found.extend(match.group(1).rstrip(b"/") or b"/" for match in _PKGDIR.finditer(text))
    return list(dict.fromkeys([*found[-1:], *PKGDIRS]))


def _read(target: Target, path: bytes) -> bytes:
    try:
        return target.read_bytes(path, limit=CONF_LIMIT)
    except OSError:
        return b""


def _regular(target: Target, path: bytes) -> bool:
    try:
        st = target.lstat(path)
    except OSError:
        return False
    return st.st_size > 0 and (st.st_mode & 0o170000) == 0o100000


def candidates(
    target: Target, directories: Sequence[bytes], category: str, pf: str, pn: str, flat: bool = False
) -> List[bytes]:
    """Every binary package file of exactly CATEGORY/PF in `directories` (paths inside `target`),
    laid out as in PKGDIR; with `flat`, also directly in them (a directory an operator filled)."""
    cat, full, name = os.fsencode(category), os.fsencode(pf), os.fsencode(pn)
    found = []
    for directory in directories:
        if flat:
            for suffix in (b".tbz2", b".gpkg.tar", b".xpak"):
                if _regular(target, directory.rstrip(b"/") + b"/" + full + suffix):
                    found.append(directory.rstrip(b"/") + b"/" + full + suffix)
        base = directory.rstrip(b"/") + b"/" + cat
        for suffix in (b".tbz2", b".gpkg.tar", b".xpak"):
            if _regular(target, base + b"/" + full + suffix):
                found.append(base + b"/" + full + suffix)
        try:
            names = sorted(target.listdir(base + b"/" + name))
        except OSError:
            continue
        instances = [n for n in names if n.startswith(full) and _INSTANCE.match(n[len(full) :])]
        for instance in instances[:MAX_INSTANCES]:
            if _regular(target, base + b"/" + name + b"/" + instance):
                found.append(base + b"/" + name + b"/" + instance)
    return found


def xpak_metadata(segment: bytes) -> Dict[str, bytes]:
    """The entries of an XPAK segment (`XPAKPACK`, index length, data length, index, data,
    `XPAKSTOP`); BinpkgError when it is not one."""
    if len(segment) < 24 or segment[:8] != b"XPAKPACK" or segment[-8:] != b"XPAKSTOP":
        raise BinpkgError("its XPAK metadata segment is damaged")
    index_length, data_length = struct.unpack(">II", segment[8:16])
    index = segment[16 : 16 + index_length]
    data = segment[16 + index_length : 16 + index_length + data_length]
    if len(index) != index_length or len(data) != data_length:
        raise BinpkgError("its XPAK metadata segment is cut short")
    entries: Dict[str, bytes] = {}
    offset = 0
    while offset < len(index) and len(entries) < XPAK_ENTRIES:
        if offset + 4 > len(index):
            raise BinpkgError("its XPAK index is damaged")
        (name_length,) = struct.unpack(">I", index[offset : offset + 4])
        name = index[offset + 4 : offset + 4 + name_length]
        fields = index[offset + 4 + name_length : offset + 12 + name_length]
        if len(name) != name_length or len(fields) != 8:
            raise BinpkgError("its XPAK index is damaged")
        start, length = struct.unpack(">II", fields)
        if start + length > len(data):
            raise BinpkgError("its XPAK index points beyond its data")
        entries[name.decode("utf-8", "replace")] = data[start : start + length]
        offset += 12 + name_length
    return entries


def _check(values: Dict[str, bytes], path: bytes, category: str, pf: str) -> None:
    have = (values.get("CATEGORY", b"").strip().decode("utf-8", "replace"), values.get("PF", b"").strip())
    if have != (category, os.fsencode(pf)):
        raise BinpkgError(
            f"{os.fsdecode(path)} holds {have[0]}/{have[1].decode('utf-8', 'replace')}, not {category}/{pf}"
        )


def _xpak(handle, path: bytes, category: str, pf: str) -> Iterator[Member]:
    size = handle.st.st_size
    if size < 16:
        raise BinpkgError(f"{os.fsdecode(path)} is too short for a binary package")
    handle.seek(size - 8)
    trailer = handle.read(8)
    (length,) = struct.unpack(">I", trailer[:4])
    if trailer[4:] != b"STOP" or not 24 <= length <= min(XPAK_LIMIT, size - 8):
        raise BinpkgError(f"{os.fsdecode(path)} has no XPAK metadata segment")
    handle.seek(size - 8 - length)
    _check(xpak_metadata(handle.read(length)), path, category, pf)
    handle.seek(0)
    # The tar archive is the file without its metadata segment.
    archive = io.BufferedReader(Window(handle, size - 8 - length), CHUNK)
    yield from read_members(archive, size - 8 - length)


def _gpkg(handle, path: bytes, category: str, pf: str) -> Iterator[Member]:
    checked = False
    for outer in read_members(handle, handle.st.st_size):
        name = outer.path.rsplit(b"/", 1)[-1]
        if outer.fileobj is None:
            continue
        if name.startswith(b"metadata.tar") and not name.endswith(b".sig") and not checked:
            values = {}
            for member in read_members(outer.fileobj, outer.size, strip=b"metadata/"):
                key = member.path[1:].decode("utf-8", "replace")
                if key in ("CATEGORY", "PF") and member.kind == "file":
                    values[key] = read_small(member, METADATA_LIMIT)
            _check(values, path, category, pf)
            checked = True
        elif name.startswith(b"image.tar") and not name.endswith(b".sig"):
            if not checked:
                raise BinpkgError(f"{os.fsdecode(path)} has no metadata before its image")
            yield from read_members(outer.fileobj, outer.size, strip=b"image/")
            return
    raise BinpkgError(f"{os.fsdecode(path)} has no image archive")


def package_members(target: Target, path: bytes, category: str, pf: str) -> Iterator[Member]:
    """The files of the binary package at `path` (inside `target`), streaming, once its metadata has
    shown that it is CATEGORY/PF. Raises BinpkgError (an ArchiveError) or OSError."""
    with target.open(path, follow=False) as handle:
        if path.endswith(b".gpkg.tar"):
            yield from _gpkg(handle, path, category, pf)
        else:
            yield from _xpak(handle, path, category, pf)
