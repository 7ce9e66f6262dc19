"""Reading the mtree manifest pacman keeps for each package (`local/NAME-VERSION/mtree`, gzip'd), in
the dialect libarchive writes and reads: `/set` and `/unset` defaults, one path per line with
`key=value` keywords, names escaped as `\\ooo` octal, full paths (`./usr/bin/x`) or, in the classic
form, names relative to a current directory that `..` leaves."""

from __future__ import annotations

import re
from typing import Dict, Iterable, Iterator, List, Tuple, Union

from fsaudit_checks.manifest.entries import DIRECTORY, FILE, SPECIAL, SYMLINK, Damage, Entry, valid_path

_HEX = {"md5": re.compile(rb"^[0-9a-f]{32}$"), "sha256": re.compile(rb"^[0-9a-f]{64}$")}
_DIGEST_KEYS = {
    b"sha256digest": "sha256",
    b"sha256": "sha256",
    b"md5digest": "md5",
    b"md5": "md5",
}
_TYPES = {
    b"file": (FILE, ""),
    b"dir": (DIRECTORY, ""),
    b"link": (SYMLINK, ""),
    b"fifo": (SPECIAL, "fifo"),
    b"char": (SPECIAL, "device"),
    b"block": (SPECIAL, "device"),
    b"socket": (SPECIAL, "socket"),
}
_ESCAPES = {b"a": 7, b"b": 8, b"f": 12, b"n": 10, b"r": 13, b"s": 32, b"t": 9, b"v": 11, b"\\": 92}
MAX_CONTINUED = 64
MAX_SIZE = 1 << 62
MAX_DEPTH = 4096


class MtreeError(ValueError):
    """A line or value that is not valid mtree."""


def unescape(raw: bytes) -> bytes:
    """A name or link target as libarchive writes it (`\\040` for a space) back to its bytes."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i : i + 1]
        if byte != b"\\" or i + 1 >= len(raw):
            out += byte
            i += 1
            continue
        octal = raw[i + 1 : i + 4]
        if len(octal) == 3 and all(48 <= c <= 55 for c in octal):
            value = int(octal, 8)
            if value > 255:
                raise MtreeError(f"bad escape {octal!r}")
            out.append(value)
            i += 4
            continue
        code = _ESCAPES.get(raw[i + 1 : i + 2])
        if code is None:
            out += raw[i + 1 : i + 2]
        else:
            out.append(code)
        i += 2
    return bytes(out)


def _keywords(words: Iterable[bytes]) -> Dict[bytes, bytes]:
    result = {}
    for word in words:
        key, equals, value = word.partition(b"=")
        if equals:
            result[key] = value
        else:
            result[key] = b""
    return result


def _logical_lines(lines: Iterable[Tuple[int, bytes | None]]) -> Iterator[Tuple[int, bytes | None]]:
    """Lines with backslash-newline continuations joined (at most MAX_CONTINUED per line)."""
    held: List[bytes] = []
    first = 0
    for number, line in lines:
        if line is None:
            held = []
            yield number, None
            continue
        if not held:
            first = number
        if line.endswith(b"\\") and not line.endswith(b"\\\\") and len(held) < MAX_CONTINUED:
            held.append(line[:-1] + b" ")
            continue
        held.append(line)
        yield first, b"".join(held)
        held = []
    if held:
        yield first, b"".join(held)


def _entry(path: bytes, keys: Dict[bytes, bytes], backup: set) -> Entry:
    kind, special = _TYPES.get(keys.get(b"type", b"file"), (None, ""))
    if kind is None:
        raise MtreeError(f"unknown type {keys[b'type']!r}")
    entry = Entry(path, kind, special=special, conffile=path in backup)
    try:
        if b"mode" in keys:
            entry.mode = int(keys[b"mode"], 8) & 0o7777
        if b"uid" in keys:
            entry.uid = int(keys[b"uid"])
        if b"gid" in keys:
            entry.gid = int(keys[b"gid"])
        if b"time" in keys:
            entry.mtime = int(keys[b"time"].split(b".")[0])
        if b"size" in keys and kind == FILE:
            entry.size = int(keys[b"size"])
            if not 0 <= entry.size < MAX_SIZE:
                raise ValueError(f"an impossible size {keys[b'size'][:40]!r}")
    except ValueError as error:
        raise MtreeError(f"bad value: {error}") from None
    if kind == SYMLINK:
        if b"link" not in keys:
            raise MtreeError("a link without its target")
        entry.link = unescape(keys[b"link"])
    if kind == FILE:
        for key, algorithm in _DIGEST_KEYS.items():
            value = keys.get(key)
            if value is None:
                continue
            if not _HEX[algorithm].match(value.lower()):
                raise MtreeError(f"bad {key.decode()} {value[:80]!r}")
            if not entry.algorithm or algorithm == "sha256":
                entry.digest, entry.algorithm = value.lower().decode(), algorithm
    return entry


def parse(
    lines: Iterable[Tuple[int, bytes | None]], source: bytes, backup: set, metadata: Dict[bytes, bytes]
) -> Iterator[Union[Entry, Damage]]:
    """Entries of an mtree (numbered lines as `manifest.read_lines` yields them).

    Paths come out absolute (`/usr/bin/x`). The package's own metadata files at the top (`.PKGINFO`,
    `.INSTALL`, ...) are not installed: `metadata` maps those whose copy pacman keeps in its
    database (`.INSTALL` -> the `install` file's path) and they are checked there; the rest are
    skipped. A line that cannot be read is a Damage and the rest is still read.
    """
    defaults: Dict[bytes, bytes] = {}
    cwd: List[bytes] = []
    for number, line in _logical_lines(lines):
        if line is None:
            yield Damage(source, "a line longer than any path", line=number)
            continue
        words = line.split()
        if not words or words[0].startswith(b"#"):
            continue
        head = words[0]
        if head == b"/set":
            defaults.update(_keywords(words[1:]))
            continue
        if head == b"/unset":
            for key in words[1:]:
                if key == b"all":
                    defaults.clear()
                defaults.pop(key, None)
            continue
        if head.startswith(b"/"):
            yield Damage(source, f"unknown special line {head[:40]!r}", line=number)
            continue
        try:
            name = unescape(head)
            keys = {**defaults, **_keywords(words[1:])}
            if b"/" in head:
                relative = name[2:] if name.startswith(b"./") else name
                path = b"/" + relative.strip(b"/")
            elif name == b"..":
                if cwd:
                    cwd.pop()
                continue
            else:
                path = b"/" + b"/".join(cwd + [name]) if name != b"." else b"/"
                if keys.get(b"type") == b"dir" and name != b"." and len(cwd) < MAX_DEPTH:
                    cwd.append(name)
            if path == b"/":
                continue
            top = path[1:]
            if top.startswith(b".") and b"/" not in top:
                if top not in metadata:
                    continue
                path = metadata[top]
            problem = valid_path(path)
            if problem:
                raise MtreeError(problem)
            yield _entry(path, keys, backup)
        except MtreeError as error:
            yield Damage(source, str(error), line=number)
