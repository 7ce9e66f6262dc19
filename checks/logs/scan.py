"""Reading one log block by block: the lines that hold a trigger are matched, dated and counted.

Memory stays flat whatever the size of the log: blocks of CHUNK bytes, lines matched up to MAX_LINE
bytes, and a "line" without a newline (a run of zeros where text was) handled in MAX_CARRY pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Iterator, Union

from fsaudit_checks.logs.files import CHUNK
from fsaudit_checks.logs.signatures import Signature, match, trigger_positions
from fsaudit_checks.logs.times import line_time

MAX_LINE = 16 << 10  # a longer line is scanned up to here
MAX_CARRY = 4 << 20  # a "line" without a newline this long is scanned in pieces
QUOTE = 400  # characters of a line quoted in a finding
CONTEXT = 8192  # bytes looked back for the time of an undated line (a traceback under its header)
ZERO_RUN = b"\0" * 16
_ZERO_RUNS = re.compile(rb"\x00{16,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def quote(line: bytes) -> str:
    text = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace").strip()
    # Terminal escapes in a hostile log must not reach a customer's screen as escapes.
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= QUOTE else text[: QUOTE - 1] + "…"


@dataclass
class Match:
    """A line of a log (or an entry of a journal) that matches a corruption signature."""

    signature: Signature
    log: bytes
    line: bytes
    when: datetime | None
    details: dict


@dataclass
class ZeroRuns:
    """Runs of zero bytes in a text log: blocks allocated whose data never reached the disk."""

    log: bytes
    first: int
    runs: int
    zero_bytes: int


Problem = Union[Match, ZeroRuns]


class LogScan:
    """One log read block by block: the lines holding a trigger are matched and dated, and yielded as
    plain problems (the checker makes the findings)."""

    def __init__(self, path: bytes, reference: datetime, offset: int, line_known: bool, tz: tzinfo, since):
        self.path = path
        self.tz = tz
        self.since = since
        self.bytes_read = 0
        self.reference = reference
        self.offset = offset
        self.line_known = line_known
        self.lines = 0
        self.truncated = False
        self.previous = b""
        self.zero_first = -1
        self.zero_runs = 0
        self.zero_bytes = 0

    def read(self, stream, cap: int) -> Iterator[Problem]:
        carry = b""
        read = 0
        skip_partial = self.offset > 0
        while True:
            data = stream.read(CHUNK) if read < cap else b""
            if data:
                read += len(data)
                self.bytes_read += len(data)
                self.truncated = read >= cap and bool(stream.read(1))
            block = carry + data
            if not block:
                return
            cut = block.rfind(b"\n") + 1 if data else len(block)
            if cut == 0:
                if len(block) < MAX_CARRY:
                    carry = block
                    continue
                cut = len(block)
            body, carry = block[:cut], block[cut:]
            if skip_partial:
                # Reading from the middle of a file: the first line is a fragment.
                skip_partial = False
                first = body.find(b"\n") + 1
                self.offset += first
                body = body[first:]
            yield from self._block(body)
            self.offset += len(body)
            self.previous = body[-CONTEXT:]

    def _block(self, body: bytes) -> Iterator[Problem]:
        if ZERO_RUN in body:
            for run in _ZERO_RUNS.finditer(body):
                if self.zero_first < 0:
                    self.zero_first = self.offset + run.start()
                self.zero_runs += 1
                self.zero_bytes += run.end() - run.start()
        counted_to = 0
        since = self.since
        for start in trigger_positions(body):
            end = body.find(b"\n", start)
            line = body[start : (end if end != -1 and end - start <= MAX_LINE else start + MAX_LINE)]
            signature = match(line)
            if signature is None:
                continue
            self.lines += body.count(b"\n", counted_to, start)
            counted_to = start
            when = line_time(line, self.tz, self.reference) or self._context_time(body, start)
            if when is not None and when < since:
                continue
            details = {
                "offset": self.offset + start,
                "line_number": self.lines + 1 if self.line_known else None,
            }
            yield Match(signature, self.path, line, when, details)
        self.lines += body.count(b"\n", counted_to)

    def _context_time(self, body: bytes, start: int):
        """The time of the nearest dated line above (a traceback's lines carry none of their own)."""
        low = max(0, start - CONTEXT)
        before = body[low:start] if low else self.previous + body[:start]
        for candidate in reversed(before.split(b"\n")[-40:]):
            when = line_time(candidate, self.tz, self.reference)
            if when is not None:
                return when
        return None

    def finish(self) -> Iterator[Problem]:
        if self.zero_runs:
            yield ZeroRuns(self.path, self.zero_first, self.zero_runs, self.zero_bytes)
            self.zero_runs = 0
