"""The suspect time window: `--window START..END`, read in the audited system's time zone."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo

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


def target_timezone(root: str = "/") -> tzinfo:
    """The audited system's local time zone: its own etc/localtime, else this machine's."""
    # Through the Target: /etc/localtime is usually an absolute symlink, which must resolve inside
    # the image under --root, not on this machine.
    try:
        from zoneinfo import ZoneInfo

        data = Target(root).read_bytes("/etc/localtime", limit=1 << 20)
        return ZoneInfo.from_file(io.BytesIO(data), key="localtime")
    except (OSError, ValueError, ImportError):
        return datetime.now().astimezone().tzinfo or timezone.utc


def _parse_end(text: str, tz: tzinfo, is_end: bool) -> datetime:
    text = text.strip()
    if _DATE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as error:
            raise WindowError(f"{text!r}: {error}") from None
        if is_end:
            day += timedelta(days=1)
        return datetime.combine(day, time(0, 0), tzinfo=tz)
    iso = text.replace(" ", "T", 1)
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise WindowError(
            f"cannot read {text!r} as an ISO 8601 date or date-time (e.g. 2014-06-02 or 2014-06-02T13:30)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment


def parse_window(text: str, tz: tzinfo | None = None, now: datetime | None = None) -> Window:
    """Read `START..END`; a lone date or date-time covers that day or that moment's day.

    An end without a zone is in `tz` (the audited system's local time); a date alone covers the whole
    day; an empty END means until now, an empty START means from the beginning.
    """
    tz = tz or timezone.utc
    text = (text or "").strip()
    if not text:
        raise WindowError("the window is empty; give START..END, e.g. 2014-06-02..2014-06-07")
    if ".." not in text:
        if not _DATE.match(text):
            raise WindowError(f"{text!r}: give a range START..END, or a single date for a whole day")
        return Window(_parse_end(text, tz, False), _parse_end(text, tz, True))
    start_text, _, end_text = text.partition("..")
    start = _parse_end(start_text, tz, False) if start_text.strip() else None
    if end_text.strip():
        end = _parse_end(end_text, tz, True)
    else:
        end = now or datetime.now(timezone.utc)
    if start is not None and end <= start:
        raise WindowError(f"the window {text!r} ends before it starts")
    return Window(start, end)
