"""Timestamps at the start of log lines, in the formats the logs of a Linux VM use.

- syslog: `Jun  3 12:00:01 host prog: ...` (no year: taken from the file's mtime, the year before
  when the date lies after it, as in a log that spans New Year);
- ISO 8601 and RFC 5424: `2014-06-03T12:00:01.123456+02:00 host ...`, Python logging and Zope event
  logs `2014-06-03 12:00:01,123 ...` / `2014-06-03T12:00:01 ERROR ...`;
- PostgreSQL: `2014-06-03 12:00:01.123 UTC [4242] LOG: ...`, its csvlog and jsonlog (a zone name
  other than UTC/GMT is read in the system's zone);
- nginx: `2014/06/03 12:00:01 [error] ...`; Apache: `[Tue Jun 03 12:00:01.123456 2014] [core:error] ...`.

A time without a zone is the audited system's local time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

_MONTHS = {
    name: number for number, name in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)
}
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"

_SYSLOG = re.compile(rb"^(?:<\d{1,3}>)?" + _MONTH + rb" {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d)\b")
_ISO = re.compile(
    rb"^\[?(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
    rb"(Z|[+-]\d\d:?\d\d| UTC\b| GMT\b| [A-Z]{2,5}\b)?"
)
_NGINX = re.compile(rb"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\b")
_APACHE = re.compile(rb"^\[(?:\w{3} )?" + _MONTH + rb" (\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? (\d{4})\]")
# RFC 5424 after its priority and version: `<34>1 2014-06-03T12:00:01Z host ...`; PostgreSQL's
# jsonlog: `{"timestamp":"2014-06-03 12:00:01.123 UTC",...}`.
_PREFIX = re.compile(rb'^(?:<\d{1,3}>\d |\{"timestamp": ?")')


def _fraction(digits: bytes | None) -> int:
    return int((digits or b"0")[:6].ljust(6, b"0"))


def _zone(text: bytes | None, local: tzinfo) -> tzinfo:
    if not text:
        return local
    text = text.strip()
    if text in (b"Z", b"UTC", b"GMT"):
        return timezone.utc
    if text[:1] in (b"+", b"-"):
        digits = text[1:].replace(b":", b"")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4]))
        return timezone(-offset if text[:1] == b"-" else offset)
    return local


def line_time(line: bytes, local: tzinfo, reference: datetime) -> datetime | None:
    """The time at the start of `line`, or None when it has none this module knows.

    `reference` is the time of the file's last write (its mtime), for formats without a year.
    """
    prefix = _PREFIX.match(line)
    if prefix:
        line = line[prefix.end() :]
    try:
        match = _ISO.match(line)
        if match:
            year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
            return datetime(
                year,
                month,
                day,
                hour,
                minute,
                second,
                _fraction(match.group(7)),
                _zone(match.group(8), local),
            )
        match = _SYSLOG.match(line)
        if match:
            month, day = _MONTHS[match.group(1)], int(match.group(2))
            here = reference.astimezone(local)
            # A line cannot be newer than the file's last write: a later date is from the year before.
            year = here.year if (month, day) <= (here.month, here.day + 1) else here.year - 1
            hour, minute, second = (int(g) for g in match.groups()[2:5])
            return datetime(year, month, day, hour, minute, second, tzinfo=local)
        match = _NGINX.match(line)
        if match:
            year, month, day, hour, minute, second = (int(g) for g in match.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=local)
        match = _APACHE.match(line)
        if match:
            month, day = _MONTHS[match.group(1)], int(match.group(2))
            hour, minute, second = (int(g) for g in match.groups()[2:5])
            return datetime(
                int(match.group(7)), month, day, hour, minute, second, _fraction(match.group(6)), tzinfo=local
            )
    except (ValueError, OverflowError):
        # 30 February, hour 25: a damaged line, not a time.
        return None
    return None
