"""Reading one log block by block: the lines that hold a trigger are matched, dated and counted.

Memory stays flat whatever the size of the log: blocks of CHUNK bytes, lines matched up to MAX_LINE
bytes, and a "line" without a newline (a run of zeros where text was) handled in MAX_CARRY pieces.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Dict, Iterator, Tuple

from fsaudit.model import Finding
from fsaudit_checks.logs.files import CHUNK
from fsaudit_checks.logs.signatures import Signature, match, trigger_positions
from fsaudit_checks.logs.times import line_time

if TYPE_CHECKING:  # the checker imports this module
    from fsaudit_checks.logs import LogsChecker

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


class Matches:
    """How many lines matched each signature in one log; the first few are listed, the rest counted."""

    def __init__(self, limit: int):
        self.limit = limit
        self.counts: Dict[str, int] = {}
        self.last: Dict[str, Tuple[Signature, str]] = {}

    def listed(self, signature: Signature, when: str) -> bool:
        count = self.counts.get(signature.name, 0) + 1
        self.counts[signature.name] = count
        self.last[signature.name] = (signature, when)
        return count <= self.limit

    def overflow(self) -> Iterator[Tuple[Signature, int, str]]:
        for name, count in self.counts.items():
            if count > self.limit:
                signature, when = self.last[name]
                yield signature, count - self.limit, when


class LogScan:
    """One log read block by block: the lines holding a trigger are matched and dated."""

    def __init__(self, checker: LogsChecker, path: bytes, reference: datetime, offset: int, line_known: bool):
        self.checker = checker
        self.path = path
        self.reference = reference
        self.offset = offset
        self.line_known = line_known
        self.lines = 0
        self.truncated = False
        self.matches = Matches(checker.settings["max_per_signature"])
        self.previous = b""
        self.zero_first = -1
        self.zero_runs = 0
        self.zero_bytes = 0

    def read(self, stream, cap: int) -> Iterator[Finding]:
        carry = b""
        read = 0
        skip_partial = self.offset > 0
        while True:
            data = stream.read(CHUNK) if read < cap else b""
            if data:
                read += len(data)
                self.checker.stats["bytes_read"] += len(data)
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

    def _block(self, body: bytes) -> Iterator[Finding]:
        if ZERO_RUN in body:
            for run in _ZERO_RUNS.finditer(body):
                if self.zero_first < 0:
                    self.zero_first = self.offset + run.start()
                self.zero_runs += 1
                self.zero_bytes += run.end() - run.start()
        counted_to = 0
        since = self.checker.since
        for start in trigger_positions(body):
            end = body.find(b"\n", start)
            line = body[start : (end if end != -1 and end - start <= MAX_LINE else start + MAX_LINE)]
            signature = match(line)
            if signature is None:
                continue
            self.lines += body.count(b"\n", counted_to, start)
            counted_to = start
            when = line_time(line, self.checker.tz, self.reference) or self._context_time(body, start)
            if when is not None and when < since:
                continue
            when_text = when.astimezone(self.checker.tz).isoformat(timespec="seconds") if when else ""
            if self.matches.listed(signature, when_text):
                details = {
                    "offset": self.offset + start,
                    "line_number": self.lines + 1 if self.line_known else None,
                }
                yield self.checker.signature_finding(signature, self.path, line, when, details)
        self.lines += body.count(b"\n", counted_to)

    def _context_time(self, body: bytes, start: int):
        """The time of the nearest dated line above (a traceback's lines carry none of their own)."""
        low = max(0, start - CONTEXT)
        before = body[low:start] if low else self.previous + body[:start]
        for candidate in reversed(before.split(b"\n")[-40:]):
            when = line_time(candidate, self.checker.tz, self.reference)
            if when is not None:
                return when
        return None

    def finish(self) -> Iterator[Finding]:
        for signature, more, last in self.matches.overflow():
            yield self.checker.overflow_finding(self.path, signature, more, last)
        self.matches = Matches(self.matches.limit)
        if self.zero_runs:
            yield self.checker.zero_finding(self.path, self.zero_first, self.zero_runs, self.zero_bytes)
            self.zero_runs = 0
