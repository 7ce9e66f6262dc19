"""Finding log files inside the target, and reading compressed ones up to where they are damaged."""

from __future__ import annotations

import bz2
import fnmatch
import lzma
import os
import zlib
from typing import List, Tuple

from fsaudit.target import Target

CHUNK = 1 << 20
MAX_GLOB = 10_000
# A rotated log compresses 5 to 50 times; 1000 times is a decompression bomb (a few KiB of bzip2 can
# hold hundreds of GiB of zeros) or data too repetitive to be worth reading in full.
MAX_RATIO = 1000
RATIO_FLOOR = 64 << 20
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


def target_glob(target: Target, pattern: str, limit: int = MAX_GLOB) -> List[bytes]:
    """Paths inside the target matching a glob (`*`, `?`, `[...]` per component), resolved inside it."""
    parts = [os.fsencode(part) for part in pattern.split("/") if part]
    current = [b""]
    for part in parts:
        found = []
        magic = any(char in part for char in b"*?[")
        for base in current:
            if not magic:
                found.append(base + b"/" + part)
                continue
            try:
                names = target.listdir(base or b"/")
            except OSError:
                continue
            found.extend(base + b"/" + name for name in sorted(names) if fnmatch.fnmatchcase(name, part))
        current = found[:limit]
    return [path for path in current if target.exists(path, follow=True)]


def decompressed_cap(compressed_size: int, limit: int) -> Tuple[int, bool]:
    """How many decompressed bytes of a compressed log to read: `limit` (max_file_mb), or less when
    that is more than MAX_RATIO times the compressed size (never less than RATIO_FLOOR); and whether
    the ratio is what sets it."""
    by_ratio = max(RATIO_FLOOR, compressed_size * MAX_RATIO)
    return (by_ratio, True) if by_ratio < limit else (limit, False)


def compression(head: bytes) -> str:
    """ "gzip", "bzip2", "xz", "zstd" or "plain", from a file's first bytes (not its name)."""
    return next((name for prefix, name in _MAGIC if head.startswith(prefix)), "plain")


class Decompressed:
    """A gzip, bzip2 or xz stream read like a file, up to where its data is damaged.

    Python's own readers raise on damage and lose the data decoded just before it; this one hands out
    everything that decodes, then stops and says why in `error`. Several members (concatenated
    archives) are read in turn; zero padding after the last one is ignored. Output is produced at most
    `size` bytes at a time, so a decompression bomb cannot fill memory.
    """

    def __init__(self, raw, kind: str):
        self.raw = raw
        self.kind = kind
        self.error = ""
        self.done = False
        self.input = b""
        self.fed = False
        self.decoder = self._decoder()

    def _decoder(self):
        self.fed = False
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor()

    def _needs_input(self) -> bool:
        if self.input:
            return False
        return self.kind == "gzip" or self.decoder.needs_input

    def read(self, size: int = CHUNK) -> bytes:
        out = []
        have = 0
        while have < size and not self.done:
            if self._needs_input():
                self.input = self.raw.read(CHUNK)
                if not self.input:
                    out.append(self._end())
                    break
            if not self.fed:
                # Between members: zero padding (tape blocks, preallocation) is not a new member.
                self.input = self.input.lstrip(b"\0")
                if not self.input:
                    continue
            self.fed = True
            try:
                if self.kind == "gzip":
                    piece = self.decoder.decompress(self.input, size - have)
                    self.input = self.decoder.unconsumed_tail
                else:
                    piece = self.decoder.decompress(self.input, max_length=size - have)
                    self.input = b""
            except (zlib.error, OSError, EOFError, lzma.LZMAError) as error:
                self.error = str(error) or type(error).__name__
                self.done = True
                break
            out.append(piece)
            have += len(piece)
            if self.decoder.eof:
                self.input = self.decoder.unused_data + self.input
                self.decoder = self._decoder()
        return b"".join(out)

    def _end(self) -> bytes:
        """The file ended: what the decoder still holds, and whether the last member was complete."""
        self.done = True
        rest = b""
        if self.kind == "gzip" and self.fed and not self.decoder.eof:
            try:
                rest = self.decoder.flush()
            except zlib.error:
                rest = b""
        if self.fed and not self.decoder.eof:
            self.error = "the compressed data ends before its end marker (cut short)"
        return rest

    def close(self) -> None:
        """The raw file belongs to the caller."""
