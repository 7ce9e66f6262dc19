"""Reads a git index file (`.git/index`, versions 2 to 4) defensively, checksum included."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Iterator, List

_HEADER = struct.Struct(">4sII")
# ctime s, ns, mtime s, ns, dev, ino, mode, uid, gid, size
_STAT = struct.Struct(">10I")
EXTENDED = 0x4000
SKIP_WORKTREE = 0x4000  # in the extended flags
MAX_ENTRIES = 50_000_000


class IndexDamaged(ValueError):
    """The index file is not what git wrote: bad signature, checksum, or an entry out of bounds."""


@dataclass
class IndexEntry:
    path: bytes
    mode: int
    object_id: str
    mtime: int
    mtime_ns: int
    size: int
    skip_worktree: bool

    @property
    def kind(self) -> str:
        return {0o100644: "file", 0o100755: "file", 0o120000: "symlink", 0o160000: "submodule"}.get(
            self.mode, "other"
        )


def _varint(data: bytes, offset: int) -> tuple:
    """git's offset varint (index v4 path prefix lengths)."""
    if offset >= len(data):
        raise IndexDamaged("entry runs past the end of the index")
    byte = data[offset]
    value = byte & 0x7F
    offset += 1
    while byte & 0x80:
        if offset >= len(data):
            raise IndexDamaged("entry runs past the end of the index")
        byte = data[offset]
        value = ((value + 1) << 7) | (byte & 0x7F)
        offset += 1
    return value, offset


def _valid_path(path: bytes) -> bool:
    """git's own rule for paths in the index (verify_path): relative, no empty, `.`, `..` or `.git`
    component. Anything else would make fsaudit read outside the work tree."""
    if not path or path.startswith(b"/") or path.endswith(b"/"):
        return False
    return all(part not in (b"", b".", b"..") and part.lower() != b".git" for part in path.split(b"/"))


def read_index(data: bytes, hash_size: int = 20) -> List[IndexEntry]:
    """Every entry of the index `data`; raises IndexDamaged for anything malformed."""
    return list(iter_index(data, hash_size))


def iter_index(data: bytes, hash_size: int = 20) -> Iterator[IndexEntry]:
    if len(data) < _HEADER.size + hash_size:
        raise IndexDamaged(f"the index is only {len(data)} bytes long")
    algorithm = "sha1" if hash_size == 20 else "sha256"
    trailer = data[-hash_size:]
    # index.skipHash leaves a zero trailer instead of the checksum.
    if trailer.strip(b"\0") and hashlib.new(algorithm, data[:-hash_size]).digest() != trailer:
        raise IndexDamaged("the index checksum does not match its content")
    signature, version, count = _HEADER.unpack_from(data, 0)
    if signature != b"DIRC" or version not in (2, 3, 4):
        raise IndexDamaged(f"not a git index (signature {signature!r}, version {version})")
    if count > MAX_ENTRIES:
        raise IndexDamaged(f"the index claims {count} entries")
    end = len(data) - hash_size
    offset = _HEADER.size
    previous = b""
    for _ in range(count):
        start = offset
        if offset + _STAT.size + hash_size + 2 > end:
            raise IndexDamaged("entry runs past the end of the index")
        fields = _STAT.unpack_from(data, offset)
        offset += _STAT.size
        object_id = data[offset : offset + hash_size].hex()
        offset += hash_size
        (flags,) = struct.unpack_from(">H", data, offset)
        offset += 2
        extended = 0
        if flags & EXTENDED:
            if version < 3 or offset + 2 > end:
                raise IndexDamaged("extended flags in an index that cannot have them")
            (extended,) = struct.unpack_from(">H", data, offset)
            offset += 2
        if version == 4:
            strip, offset = _varint(data, offset)
            nul = data.find(b"\0", offset, end)
            if nul < 0 or strip > len(previous):
                raise IndexDamaged("malformed path in the index")
            path = previous[: len(previous) - strip] + data[offset:nul]
            offset = nul + 1
        else:
            nul = data.find(b"\0", offset, end)
            if nul < 0:
                raise IndexDamaged("malformed path in the index")
            path = data[offset:nul]
            # Entries are padded with NULs to a multiple of 8 bytes.
            offset = start + ((nul - start + 8) & ~7)
        previous = path
        if not _valid_path(path):
            raise IndexDamaged(f"an entry with an invalid path {path[:80]!r}")
        yield IndexEntry(
            path=path,
            mode=fields[6],
            object_id=object_id,
            mtime=fields[2],
            mtime_ns=fields[3],
            size=fields[9],
            skip_worktree=bool(extended & SKIP_WORKTREE),
        )
