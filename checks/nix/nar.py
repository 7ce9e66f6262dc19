"""The Nix archive (NAR) serialisation of a store path, and its SHA-256: what nix records as a valid
path's `narHash` and `narSize`, computed here from the files without nix.

A NAR is a sequence of strings, each its length as a little-endian u64, its bytes, and zero padding to
a multiple of 8:

    "nix-archive-1" node
    node = "(" "type" ( "regular" ["executable" ""] "contents" CONTENT
                      | "symlink" "target" TARGET
                      | "directory" ("entry" "(" "name" NAME "node" node ")")* ) ")"

Directory entries come sorted by name (bytes); a file is executable when its owner may execute it.
Nothing else can be in a NAR: a FIFO, socket or device in a store path is damage. The hash is
printed by nix as `sha256:` + its own base-32 (`nix hash path`); the database may hold base-16.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from fsaudit.target import Target, file_kind

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_DECODE = {c: i for i, c in enumerate(ALPHABET)}
_BLOCK = 1 << 20
MAX_NODES = 1_000_000
MAX_DEPTH = 256
MAX_LINK = 4096
CANONICAL_MTIME = 1
SAMPLE = 20


def base32_encode(digest: bytes) -> str:
    """Nix's base-32: the alphabet without e, o, u, t, and the bits taken from the end."""
    length = (len(digest) * 8 - 1) // 5 + 1
    out = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        c = digest[i] >> j
        if i + 1 < len(digest):
            c |= digest[i + 1] << (8 - j)
        out.append(ALPHABET[c & 0x1F])
    return "".join(out)


def base32_decode(text: str, size: int) -> bytes:
    """The `size` bytes that `text` (nix base-32) encodes; ValueError when it cannot be one."""
    if len(text) != (size * 8 - 1) // 5 + 1:
        raise ValueError("wrong length for nix base-32")
    out = bytearray(size)
    for n, char in enumerate(reversed(text)):
        digit = _DECODE.get(char)
        if digit is None:
            raise ValueError(f"{char!r} is not a nix base-32 digit")
        bit = n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise ValueError("nix base-32 value out of range")
    return bytes(out)


def parse_hash(text: str) -> Tuple[str, bytes]:
    """(algorithm, digest) of a hash as nix writes it: `sha256:` + base-16, nix base-32 or base-64,
    or the SRI form `sha256-` + base-64. ValueError for anything else."""
    if ":" in text:
        algorithm, _, value = text.partition(":")
    elif "-" in text:
        algorithm, _, value = text.partition("-")
        if len(value) != 44:
            raise ValueError("an SRI hash needs base-64")
    else:
        raise ValueError("no algorithm")
    sizes = {"sha256": 32, "sha512": 64, "sha1": 20, "md5": 16}
    size = sizes.get(algorithm)
    if size is None:
        raise ValueError(f"unknown hash algorithm {algorithm!r}")
    try:
        if len(value) == size * 2:
            return algorithm, bytes.fromhex(value)
        if len(value) == (size * 8 - 1) // 5 + 1:
            return algorithm, base32_decode(value, size)
        decoded = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as error:
        raise ValueError(f"not a {algorithm} hash: {error}") from None
    if len(decoded) != size:
        raise ValueError(f"not a {algorithm} hash")
    return algorithm, decoded


def _string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data + b"\0" * (-len(data) % 8)


_OPEN = _string(b"(")
_CLOSE = _string(b")")
_HEADER = _string(b"nix-archive-1")
_REGULAR = _string(b"type") + _string(b"regular")
_EXECUTABLE = _string(b"executable") + _string(b"")
_CONTENTS = _string(b"contents")
_SYMLINK = _string(b"type") + _string(b"symlink") + _string(b"target")
_DIRECTORY = _string(b"type") + _string(b"directory")
_ENTRY = _string(b"entry") + _OPEN + _string(b"name")
_NODE = _string(b"node")


@dataclass
class Content:
    """A regular file's content in the archive: where it is, how long it was when walked."""

    inner: bytes
    host: bytes
    size: int


@dataclass
class Problem:
    """Why (part of) a store path cannot be serialised: `kind` is wrong-type, unreadable,
    permission or missing (the store path itself), or limit (a bound cut the walk)."""

    kind: str
    inner: bytes
    detail: str
    found: str = ""


@dataclass
class Plan:
    """The archive of one store path as framing bytes and file contents, in order."""

    parts: List[Union[bytes, Content]] = field(default_factory=list)
    size: int = 0
    files: int = 0
    content_bytes: int = 0
    latest_mtime: float = 0.0
    # Files whose mtime is not nix's canonical 1: written after the path was registered.
    touched: List[bytes] = field(default_factory=list)
    touched_count: int = 0
    problems: List[Problem] = field(default_factory=list)
    nodes: int = 0
    # After `release()`: the paths of the regular files, all that is kept.
    file_paths: List[bytes] = field(default_factory=list)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.parts and isinstance(self.parts[-1], bytes):
            self.parts[-1] += data
        else:
            self.parts.append(data)

    def release(self) -> None:
        """Keep only what a verdict needs once the digest is known: the files' paths."""
        self.file_paths = [part.inner for part in self.parts if isinstance(part, Content)]
        self.parts = []

    def note_mtime(self, inner: bytes, st: os.stat_result) -> None:
        if st.st_mtime != CANONICAL_MTIME:
            self.latest_mtime = max(self.latest_mtime, st.st_mtime)
            self.touched_count += 1
            if len(self.touched) < SAMPLE:
                self.touched.append(inner)


def _problem(error: OSError, inner: bytes) -> Problem:
    if error.errno in (errno.EACCES, errno.EPERM):
        return Problem("permission", inner, error.strerror or str(error))
    return Problem("unreadable", inner, error.strerror or str(error))


def plan(target: Target, store_path: bytes) -> Plan:
    """The archive plan of `store_path` (a path inside the target), from metadata alone.

    The store path is resolved inside the root without following its last component; nothing
    below it is ever followed (symlinks are archived as symlinks)."""
    result = Plan()
    try:
        host = target.resolve(store_path, follow=False)
        st = os.lstat(host)
    except FileNotFoundError:
        result.problems.append(Problem("missing", store_path, "the store path is gone"))
        return result
    except OSError as error:
        if error.errno == errno.ELOOP:
            result.problems.append(Problem("wrong-type", store_path, "symlink loop", "symlink loop"))
        else:
            result.problems.append(_problem(error, store_path))
        return result
    result.add(_HEADER)
    # An explicit stack keeps deep trees off Python's call stack: each item is a node to open, or
    # the framing that closes a directory entry.
    stack: List[Union[Tuple[bytes, bytes, os.stat_result, int], bytes]] = [(store_path, host, st, 0)]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            result.add(item)
            continue
        if not _node(result, stack, *item):
            return result
    return result


def _node(result: Plan, stack: list, inner: bytes, host: bytes, st: os.stat_result, depth: int) -> bool:
    """Add one node; False when a bound stops the walk."""
    result.nodes += 1
    if result.nodes > MAX_NODES:
        result.problems.append(Problem("limit", inner, f"more than {MAX_NODES:,} files: not verified"))
        return False
    result.note_mtime(inner, st)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        result.add(_OPEN + _REGULAR + (_EXECUTABLE if mode & stat.S_IXUSR else b"") + _CONTENTS)
        result.add(struct.pack("<Q", st.st_size))
        result.parts.append(Content(inner, host, st.st_size))
        result.size += st.st_size
        result.content_bytes += st.st_size
        result.files += 1
        result.add(b"\0" * (-st.st_size % 8) + _CLOSE)
        return True
    if stat.S_ISLNK(mode):
        try:
            if st.st_size > MAX_LINK:
                raise OSError(errno.ENAMETOOLONG, "the symlink's target is implausibly long")
            link = os.readlink(host)
        except OSError as error:
            result.problems.append(_problem(error, inner))
            return True
        result.add(_OPEN + _SYMLINK + _string(link) + _CLOSE)
        return True
    if stat.S_ISDIR(mode):
        if depth >= MAX_DEPTH:
            result.problems.append(Problem("limit", inner, f"deeper than {MAX_DEPTH} directories"))
            return False
        try:
            with os.scandir(host) as scan:
                names = sorted(entry.name for entry in scan)
        except OSError as error:
            result.problems.append(_problem(error, inner))
            return True
        result.add(_OPEN + _DIRECTORY)
        children = []
        for name in names:
            child_host, child_inner = host + b"/" + name, inner + b"/" + name
            try:
                child_st = os.lstat(child_host)
            except OSError as error:
                result.problems.append(_problem(error, child_inner))
                continue
            children.append((name, child_inner, child_host, child_st))
        stack.append(_CLOSE)
        for name, child_inner, child_host, child_st in reversed(children):
            stack.append(_CLOSE)
            stack.append((child_inner, child_host, child_st, depth + 1))
            stack.append(_ENTRY + _string(name) + _NODE)
        return True
    kind = file_kind(mode)
    result.problems.append(Problem("wrong-type", inner, f"a {kind} cannot be in a store path", kind))
    return True


def digest(target: Target, archive: Plan, stop=None) -> Tuple[Optional[bytes], List[Problem]]:
    """The SHA-256 of the archive, reading each file through the target (no final symlink
    followed, no FIFO opened, cached pages dropped on a live system). (None, problems) when a file
    cannot be read; a file whose length changed since the walk makes the digest differ."""
    hasher = hashlib.sha256()
    buffer = memoryview(bytearray(_BLOCK))
    for part in archive.parts:
        if stop is not None and stop.is_set():
            return None, [Problem("limit", b"", "interrupted")]
        if isinstance(part, bytes):
            hasher.update(part)
            continue
        try:
            with target.open_host(part.host) as handle:
                left = part.size
                while left > 0:
                    if stop is not None and stop.is_set():
                        return None, [Problem("limit", part.inner, "interrupted")]
                    count = handle.readinto(buffer[: min(_BLOCK, left)])
                    if not count:
                        break
                    hasher.update(buffer[:count])
                    left -= count
                if left > 0:
                    # Shorter than when walked: the digest cannot match; keep the framing aligned.
                    hasher.update(b"\xff" * left)
        except OSError as error:
            if error.errno == errno.ELOOP or getattr(error, "kind", None):
                found = getattr(error, "kind", "symlink")
                return None, [Problem("wrong-type", part.inner, f"a {found} where a file was walked", found)]
            return None, [_problem(error, part.inner)]
    return hasher.digest(), []
