"""RPM header blobs as the package database stores them, parsed defensively.

A database blob is a header without its 8-byte magic: the entry count `il` and the data length `dl`
(big-endian), `il` index entries of 16 bytes (tag, type, offset, count), then `dl` bytes of data. The
entries that came from the package file form the immutable region (tag 63, whose trailer in the data
records the region's size); entries rpm added at install time (FILESTATES, INSTALLTIME, the signature
digests) follow it. Every entry is bounds-checked: a damaged blob raises `HeaderError`, never reads
outside the blob and never allocates more than the blob's own size.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
# Limits rpm itself enforces on a header (lib/header.c: HEADER_MAX_BYTES, hdrchkTags).
MAX_BLOB = 256 << 20
MAX_ENTRIES = 0x10000

# Tag types.
NULL, CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = range(10)
_SIZES = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8, BIN: 1}
_ALIGN = {INT16: 2, INT32: 4, INT64: 8}
_FORMATS = {INT16: "H", INT32: "I", INT64: "Q"}

# Tags.
REGION_IMMUTABLE = 63
SHA1HEADER = 269
SHA256HEADER = 273
NAME, VERSION, RELEASE, EPOCH = 1000, 1001, 1002, 1003
INSTALLTIME = 1008
ARCH = 1022
OLDFILENAMES = 1027
FILESIZES, FILESTATES, FILEMODES = 1028, 1029, 1030
FILERDEVS, FILEMTIMES, FILEDIGESTS, FILELINKTOS, FILEFLAGS = 1033, 1034, 1035, 1036, 1037
FILEUSERNAME, FILEGROUPNAME = 1039, 1040
FILEVERIFYFLAGS = 1045
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
LONGFILESIZES = 5008
FILEDIGESTALGO = 5011

# FILEFLAGS bits.
RPMFILE_CONFIG = 1 << 0
RPMFILE_DOC = 1 << 1
RPMFILE_MISSINGOK = 1 << 3
RPMFILE_GHOST = 1 << 6
RPMFILE_LICENSE = 1 << 7
RPMFILE_README = 1 << 8
RPMFILE_ARTIFACT = 1 << 12

# FILESTATES values.
STATE_NORMAL, STATE_REPLACED, STATE_NOTINSTALLED, STATE_NETSHARED, STATE_WRONGCOLOR = 0, 1, 2, 3, 4

# FILEVERIFYFLAGS bits.
VERIFY_DIGEST = 1 << 0
VERIFY_SIZE = 1 << 1
VERIFY_LINKTO = 1 << 2
VERIFY_USER = 1 << 3
VERIFY_GROUP = 1 << 4
VERIFY_MTIME = 1 << 5
VERIFY_MODE = 1 << 6
VERIFY_RDEV = 1 << 7
VERIFY_ALL = 0xFFFFFFFF

# FILEDIGESTALGO (OpenPGP hash algorithm ids) -> hashlib names.
DIGEST_ALGORITHMS = {
    1: "md5",
    2: "sha1",
    3: "ripemd160",
    8: "sha256",
    9: "sha384",
    10: "sha512",
    11: "sha224",
}


class HeaderError(ValueError):
    """The blob is not a header rpm could have written (truncated, out-of-bounds entry, ...)."""


@dataclass
class Entry:
    tag: int
    type: int
    offset: int
    count: int


class Header:
    """The tags of one package header; values are decoded lazily and bounds-checked."""

    def __init__(self, blob: bytes):
        if len(blob) < 8:
            raise HeaderError(f"header blob of {len(blob)} bytes is too short")
        if len(blob) > MAX_BLOB:
            raise HeaderError(f"header blob of {len(blob)} bytes is larger than rpm allows")
        il, dl = struct.unpack_from(">II", blob, 0)
        if not 1 <= il <= MAX_ENTRIES:
            raise HeaderError(f"header claims {il} index entries")
        data_start = 8 + 16 * il
        if data_start + dl != len(blob):
            raise HeaderError(
                f"header sizes ({il} entries, {dl} data bytes) do not match its {len(blob)} bytes"
            )
        self.blob = blob
        self.il = il
        self.dl = dl
        self._data_start = data_start
        self.entries: Dict[int, Entry] = {}
        for index in range(il):
            tag, kind, offset, count = struct.unpack_from(">IIiI", blob, 8 + 16 * index)
            entry = Entry(tag, kind, offset, count)
            self._check_entry(entry, index)
            # Entries added at install time follow the region and win over a copy inside it.
            self.entries[tag] = entry

    def _check_entry(self, entry: Entry, index: int) -> None:
        if entry.type > I18NSTRING or entry.type == NULL:
            raise HeaderError(f"entry {index} (tag {entry.tag}) has unknown type {entry.type}")
        if entry.offset < 0 or entry.offset > self.dl:
            raise HeaderError(f"entry {index} (tag {entry.tag}) points outside the data")
        if entry.count == 0 or entry.count > self.dl:
            raise HeaderError(f"entry {index} (tag {entry.tag}) has a count of {entry.count}")
        size = _SIZES.get(entry.type)
        if size is not None and entry.offset + size * entry.count > self.dl:
            raise HeaderError(f"entry {index} (tag {entry.tag}) runs past the end of the data")
        align = _ALIGN.get(entry.type)
        if align and entry.offset % align:
            raise HeaderError(f"entry {index} (tag {entry.tag}) is not aligned")

    def __contains__(self, tag: int) -> bool:
        return tag in self.entries

    def _raw(self, entry: Entry, size: int) -> bytes:
        start = self._data_start + entry.offset
        return self.blob[start : start + size]

    def _strings(self, entry: Entry) -> List[bytes]:
        """`count` NUL-terminated strings from the entry's offset, each inside the data."""
        start = self._data_start + entry.offset
        end = self._data_start + self.dl
        values = []
        position = start
        for _ in range(entry.count):
            nul = self.blob.find(b"\0", position, end)
            if nul < 0:
                raise HeaderError(f"tag {entry.tag}: string runs past the end of the data")
            values.append(self.blob[position:nul])
            position = nul + 1
        return values

    def get(self, tag: int, default=None):
        """The tag's value: a list of ints, a list of bytes strings, or bytes for BIN."""
        entry = self.entries.get(tag)
        if entry is None:
            return default
        if entry.type in (STRING, STRING_ARRAY, I18NSTRING):
            return self._strings(entry)
        if entry.type == BIN:
            return self._raw(entry, entry.count)
        if entry.type in (CHAR, INT8):
            return list(self._raw(entry, entry.count))
        fmt = _FORMATS[entry.type]
        return list(struct.unpack_from(f">{entry.count}{fmt}", self.blob, self._data_start + entry.offset))

    def ints(self, tag: int, count: int, signed8: bool = False) -> List[int] | None:
        """An integer array tag with exactly `count` values (None when absent)."""
        values = self.get(tag)
        if values is None:
            return None
        if not isinstance(values, list) or (values and not isinstance(values[0], int)):
            raise HeaderError(f"tag {tag} is not an integer array")
        if len(values) != count:
            raise HeaderError(f"tag {tag} has {len(values)} values for {count} files")
        if signed8:
            values = [v - 256 if v > 127 else v for v in values]
        return values

    def strings(self, tag: int, count: int | None = None) -> List[bytes] | None:
        values = self.get(tag)
        if values is None:
            return None
        if not isinstance(values, list) or (values and not isinstance(values[0], bytes)):
            raise HeaderError(f"tag {tag} is not a string array")
        if count is not None and len(values) != count:
            raise HeaderError(f"tag {tag} has {len(values)} values for {count} files")
        return values

    def string(self, tag: int) -> str:
        values = self.strings(tag)
        return values[0].decode("utf-8", "replace") if values else ""

    def integer(self, tag: int) -> int | None:
        values = self.get(tag)
        if isinstance(values, list) and values and isinstance(values[0], int):
            return values[0]
        return None

    # -- integrity --------------------------------------------------------------------------

    def immutable_region(self) -> bytes | None:
        """The header as it was in the package file (magic included), from the region trailer."""
        first = struct.unpack_from(">IIiI", self.blob, 8)
        if first[0] != REGION_IMMUTABLE or first[1] != BIN or first[3] != 16:
            return None
        trailer_offset = first[2]
        if trailer_offset < 0 or trailer_offset + 16 > self.dl:
            raise HeaderError("the immutable region's trailer lies outside the data")
        tag, kind, negative, count = struct.unpack_from(">IIiI", self.blob, self._data_start + trailer_offset)
        region_entries = -negative // 16 if negative < 0 else 0
        if tag != REGION_IMMUTABLE or negative % 16 or not 1 <= region_entries <= self.il:
            raise HeaderError("the immutable region's trailer is damaged")
        region_data = trailer_offset + 16
        return (
            HEADER_MAGIC
            + struct.pack(">II", region_entries, region_data)
            + self.blob[8 : 8 + 16 * region_entries]
            + self.blob[self._data_start : self._data_start + region_data]
        )

    def stored_digest(self) -> Tuple[str, str] | None:
        """(algorithm, hex digest) of the package file's header, as rpm recorded it at install time."""
        for tag, algorithm in ((SHA256HEADER, "sha256"), (SHA1HEADER, "sha1")):
            stored = self.strings(tag) if tag in self else None
            if stored:
                return algorithm, stored[0].decode("ascii", "replace").lower()
        return None

    def check_digest(self) -> Tuple[str, str | None]:
        """("ok", algorithm) when the package's header digest matches, ("none", None) when the header
        carries none, ("mismatch", algorithm) when the immutable region was altered."""
        stored = self.stored_digest()
        if stored is None:
            return "none", None
        algorithm, expected = stored
        region = self.immutable_region()
        if region is None:
            return "none", None
        return ("ok" if hashlib.new(algorithm, region).hexdigest() == expected else "mismatch"), algorithm


def version_string(header: Header) -> str:
    """[EPOCH:]VERSION-RELEASE, as rpm prints it."""
    epoch = header.integer(EPOCH)
    text = f"{header.string(VERSION)}-{header.string(RELEASE)}"
    return f"{epoch}:{text}" if epoch else text


@dataclass
class FileEntry:
    """One file of a package's manifest, as rpm -V sees it."""

    path: bytes
    size: int
    mode: int
    mtime: int
    digest: bytes
    link: bytes
    flags: int
    verify: int
    state: int
    user: bytes
    group: bytes
    rdev: int


def file_entries(header: Header, installed: Header | None = None) -> List[FileEntry]:
    """The package's files; raises HeaderError when the file tags disagree with each other.

    `installed`: the installed header whose file states to use when `header` comes from a package
    file (which has none), when they still fit.
    """
    names = _file_paths(header)
    count = len(names)
    if not count:
        return []
    sizes = header.ints(LONGFILESIZES, count) or header.ints(FILESIZES, count)
    modes = header.ints(FILEMODES, count)
    if sizes is None or modes is None:
        raise HeaderError("the header has file names but no sizes or modes")
    zeros = [0] * count
    mtimes = header.ints(FILEMTIMES, count) or zeros
    rdevs = header.ints(FILERDEVS, count) or zeros
    flags = header.ints(FILEFLAGS, count) or zeros
    verify = header.ints(FILEVERIFYFLAGS, count) or [VERIFY_ALL] * count
    states = header.ints(FILESTATES, count, signed8=True) or _installed_states(installed, count) or zeros
    empty = [b""] * count
    digests = header.strings(FILEDIGESTS, count) or empty
    links = header.strings(FILELINKTOS, count) or empty
    users = header.strings(FILEUSERNAME, count) or [b"root"] * count
    groups = header.strings(FILEGROUPNAME, count) or [b"root"] * count
    return [
        FileEntry(
            names[i],
            sizes[i],
            modes[i],
            mtimes[i],
            digests[i],
            links[i],
            flags[i],
            verify[i],
            states[i],
            users[i],
            groups[i],
            rdevs[i],
        )
        for i in range(count)
    ]


def _installed_states(installed: Header | None, count: int) -> List[int] | None:
    if installed is None:
        return None
    try:
        return installed.ints(FILESTATES, count, signed8=True)
    except HeaderError:
        return None


def _file_paths(header: Header) -> List[bytes]:
    basenames = header.strings(BASENAMES)
    if basenames is None:
        return header.strings(OLDFILENAMES) or []
    count = len(basenames)
    dirnames = header.strings(DIRNAMES) or []
    indexes = header.ints(DIRINDEXES, count)
    if indexes is None:
        raise HeaderError("the header has BASENAMES but no DIRINDEXES")
    paths = []
    for base, index in zip(basenames, indexes):
        if index >= len(dirnames):
            raise HeaderError(f"directory index {index} is out of range ({len(dirnames)} directories)")
        paths.append(dirnames[index] + base)
    return paths


def digest_algorithm(header: Header) -> str | None:
    """The hashlib name of the package's file digest algorithm (MD5 when the tag is absent)."""
    algo = header.integer(FILEDIGESTALGO)
    return DIGEST_ALGORITHMS.get(1 if algo is None else algo)
