"""The suspect time window: `--window START..END`, read in the audited system's time zone."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Union

from fsaudit.target import Target

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class WindowError(ValueError):
    """A window the user gave that cannot be understood."""


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end); either end may be open (None)."""

    start: datetime | None
    end: datetime | None

    @property
    def start_ts(self) -> float:
        return self.start.timestamp() if self.start else float("-inf")

    @property
    def end_ts(self) -> float:
        return self.end.timestamp() if self.end else float("inf")

    def contains(self, timestamp: float) -> bool:
        return self.start_ts <= timestamp < self.end_ts

    def to_dict(self) -> dict:
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }

    def __str__(self) -> str:
        start = self.start.isoformat() if self.start else ""
        end = self.end.isoformat() if self.end else ""
        return f"{start}..{end}"


def target_timezone(target: Union[Target, str] = "/") -> tzinfo:
    """The audited system's local time zone: its own etc/localtime, else this machine's. Worked out
    once per run (fsaudit.settings), and handed to the checkers in their context."""
    # Through the Target: /etc/localtime is usually an absolute symlink, which must resolve inside
    # the image under --root, not on this machine.
    if not isinstance(target, Target):
        target = Target(target)
    try:
        from zoneinfo import ZoneInfo

        data = target.read_bytes("/etc/localtime", limit=1 << 20)
        return ZoneInfo.from_file(io.BytesIO(data), key="localtime")
    except (OSError, ValueError, ImportError):
        return datetime.now().astimezone().tzinfo or timezone.utc


# One end as written: a date (a whole day), or a date-time with or without its zone.
_End = Union[date, datetime, None]


def _read_end(text: str) -> _End:
    text = text.strip()
    if not text:
        return None
    if _DATE.match(text):
        try:
            return date.fromisoformat(text)
        except ValueError as error:
            raise WindowError(f"{text!r}: {error}") from None
    iso = text.replace(" ", "T", 1)
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        raise WindowError(
            f"cannot read {text!r} as an ISO 8601 date or date-time (e.g. 2014-06-02 or 2014-06-02T13:30)"
        ) from None


def _place(end: _End, tz: tzinfo, is_end: bool) -> datetime | None:
    if end is None:
        return None
    if isinstance(end, datetime):
        return end if end.tzinfo is not None else end.replace(tzinfo=tz)
    day = end + timedelta(days=1) if is_end else end
    return datetime.combine(day, time(0, 0), tzinfo=tz)


@dataclass(frozen=True)
class WindowSpec:
    """`START..END` read once: its ends as written, not yet placed in a time zone (that needs the
    audited system, known only once its root is), so a bad window is refused before anything runs."""

    text: str
    start: _End
    end: _End
    whole_day: bool = False  # a lone date: that whole day

    @classmethod
    def parse(cls, text: str) -> WindowSpec:
        """Read `START..END`; a lone date covers that day. An empty END means until now, an empty
        START from the beginning."""
        text = (text or "").strip()
        if not text:
            raise WindowError("the window is empty; give START..END, e.g. 2014-06-02..2014-06-07")
        if ".." not in text:
            if not _DATE.match(text):
                raise WindowError(f"{text!r}: give a range START..END, or a single date for a whole day")
            day = _read_end(text)
            return cls(text, day, day, whole_day=True)
        start_text, _, end_text = text.partition("..")
        spec = cls(text, _read_end(start_text), _read_end(end_text))
        spec.resolve(timezone.utc)  # an end before the start is refused now, whatever the zone
        return spec

    def resolve(self, tz: tzinfo | None = None, now: datetime | None = None) -> Window:
        """The window in `tz` (the audited system's zone; UTC when not given): an end without a zone
        is in it, a date alone covers the whole day, an open END is `now`."""
        tz = tz or timezone.utc
        start = _place(self.start, tz, False)
        if self.whole_day:
            return Window(start, _place(self.end, tz, True))
        end = _place(self.end, tz, True) if self.end is not None else (now or datetime.now(timezone.utc))
        if start is not None and end <= start:
            raise WindowError(f"the window {self.text!r} ends before it starts")
        return Window(start, end)


def parse_window(text: str, tz: tzinfo | None = None, now: datetime | None = None) -> Window:
    """Read `START..END` and place it in `tz` (see WindowSpec)."""
    return WindowSpec.parse(text).resolve(tz, now)
