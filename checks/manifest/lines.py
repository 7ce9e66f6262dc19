"""Reading a database file line by line in bounded memory: a damaged or hostile file may have no
newline for gigabytes, or hold far more than any real database."""

from __future__ import annotations

from typing import Iterator


class TooBig(Exception):
    """A database file larger than any real one: what was read so far is used, the rest is not."""


LINE_LIMIT = 1 << 16
CHUNK = 1 << 20


def read_lines(stream, max_bytes: int, max_line: int = LINE_LIMIT) -> Iterator[tuple]:
    """(line number, line without its newline) of a binary stream, in bounded memory.

    A line longer than `max_line` comes as None (what follows it up to its newline is skipped);
    more than `max_bytes` in all raises TooBig. Errors of the stream (a damaged gzip) propagate.
    """
    lines = _Lines(max_line)
    total = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise TooBig(f"larger than {max_bytes:,} bytes: read no further")
        yield from lines.feed(chunk)
    yield from lines.end()


class _Lines:
    """Cuts chunks into numbered lines; the start of a line is kept until its newline comes, up to
    `max_line` bytes (then the line comes as None)."""

    def __init__(self, max_line: int):
        self.max_line = max_line
        self.pending = b""
        self.overlong = False
        self.number = 0

    def feed(self, chunk: bytes) -> Iterator[tuple]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            self.number += 1
            if self.overlong:
                yield self.number, None
            else:
                line = self.pending + chunk[start:end]
                yield self.number, (line if len(line) <= self.max_line else None)
            self.pending, self.overlong = b"", False
            start = end + 1

    def _keep(self, rest: bytes) -> None:
        if self.overlong:
            return
        self.pending += rest
        if len(self.pending) > self.max_line:
            self.overlong, self.pending = True, b""

    def end(self) -> Iterator[tuple]:
        if self.overlong:
            yield self.number + 1, None
        elif self.pending:
            yield self.number + 1, self.pending
