"""What a format validator is given and what it returns: the job, its bounds, the problem it finds, and
the two ways it stops early (Unsupported, Cut); with the bounded reads every validator uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

CHUNK = 1 << 20
PARSE_LIMIT = 64 << 20
ZERO_BLOCK = 4096


@dataclass
class Problem:
    """What is wrong with a file: a finding code of the `content` checker and words for it."""

    code: str  # checksum-mismatch, structure-damaged, zero-blocks, parse-error, bytecode-mismatch
    message: str
    path: Optional[bytes] = None  # the file the finding is about, when not the one checked


class Unsupported(Exception):
    """The format is known but cannot be checked on this machine (a module or program is missing)."""


class Cut(Exception):
    """A bound stopped the check before the file's end: what was read is sound, the rest unknown."""


@dataclass(frozen=True)
class Limits:
    """How far a check may go: decompressed bytes at most `max_ratio` times the compressed size
    (never less than `floor`, never more than `max_decompressed`)."""

    max_ratio: int = 1000
    max_decompressed: int = 16 << 30
    floor: int = 64 << 20

    def decompressed_cap(self, compressed: int) -> int:
        return min(self.max_decompressed, max(self.floor, compressed * self.max_ratio))


@dataclass
class Job:
    """One file to check: its path (for messages), the bounds, and for a `.pyc` its source."""

    path: bytes
    limits: Limits = Limits()
    source: Optional[object] = None  # an open file
    source_path: Optional[bytes] = None


def drain(stream, job: Job, compressed: int, total: Optional[list] = None) -> None:
    """Read a decompressing stream to its end, stopping at the job's cap (Cut)."""
    cap = job.limits.decompressed_cap(compressed)
    total = total if total is not None else [0]
    while True:
        block = stream.read(CHUNK)
        if not block:
            return
        total[0] += len(block)
        if total[0] > cap:
            raise Cut(
                f"decompressed data passed {_size(cap)} ({job.limits.max_ratio}:1 of its {_size(compressed)})"
                " and was not read further: a decompression bomb, or data too compressible to check in full"
            )


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):,.1f} {unit}"
    return f"{count:,} bytes"


def read_parsable(handle) -> bytes:
    """The whole file, when it is small enough to parse (Unsupported otherwise)."""
    data = handle.read(PARSE_LIMIT + 1)
    if len(data) > PARSE_LIMIT:
        raise Unsupported("too large to parse")
    return data
