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
    pending = b""
    overlong = False
    number = 0
    total = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise TooBig(f"larger than {max_bytes:,} bytes: read no further")
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not overlong:
                    pending += chunk[start:]
                    if len(pending) > max_line:
                        overlong, pending = True, b""
                break
            number += 1
            if overlong:
                yield number, None
            else:
                line = pending + chunk[start:end]
                yield number, (line if len(line) <= max_line else None)
            pending, overlong = b"", False
            start = end + 1
    if overlong:
        yield number + 1, None
    elif pending:
        yield number + 1, pending
