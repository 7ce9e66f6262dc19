"""The baseline file: a record of every file's size, mode, owner, mtime and SHA-256, to compare against
later.

The file is gzip-compressed JSON lines: a header, one line per entry in walk order, and a trailer
with the entry count, so a truncated baseline is recognised as such. Written and read streaming.
"""

from __future__ import annotations

import base64
import gzip
import json
import stat
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Iterator, List, Optional

from fsaudit import __version__
from fsaudit.model import display_path

FORMAT = "fsaudit-baseline/1"
LINE_LIMIT = 1 << 20


class BaselineDamaged(ValueError):
    """The baseline file cannot be read as one: wrong format, a malformed line, or cut short."""


@dataclass
class Entry:
    """One recorded file, directory or symlink."""

    path: bytes
    kind: str  # "file", "dir", "link", "other"
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    sha256: Optional[str] = None
    link: Optional[bytes] = None

    def to_line(self) -> str:
        text, raw = display_path(self.path)
        record = {
            "p": text,
            "t": self.kind,
            "s": self.size,
            "m": self.mode,
            "u": self.uid,
            "g": self.gid,
            "mt": self.mtime_ns,
        }
        if raw:
            record["b"] = raw
        if self.sha256:
            record["h"] = self.sha256
        if self.link is not None:
            record["l"] = base64.b64encode(self.link).decode("ascii")
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, record: dict) -> Entry:
        path = base64.b64decode(record["b"]) if "b" in record else record["p"].encode("utf-8")
        return cls(
            path=path,
            kind=record["t"],
            size=int(record["s"]),
            mode=int(record["m"]),
            uid=int(record["u"]),
            gid=int(record["g"]),
            mtime_ns=int(record["mt"]),
            sha256=record.get("h"),
            link=base64.b64decode(record["l"]) if "l" in record else None,
        )


def entry_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def header(root: str, paths: List[str], host: str) -> dict:
    """The first line of a baseline: what was recorded, where and when."""
    return {
        "format": FORMAT,
        "fsaudit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host,
        "root": root,
        "paths": list(paths),
    }


class BaselineWriter:
    """Writes a baseline to a binary file: the header, entries as they come, then the trailer."""

    def __init__(self, output: IO[bytes], first: dict):
        self.entries = 0
        self._stream = gzip.GzipFile(fileobj=output, mode="wb", compresslevel=6)
        self._stream.write((json.dumps(first) + "\n").encode("utf-8"))

    def write(self, entry: Entry) -> None:
        self.entries += 1
        self._stream.write(entry.to_line().encode("utf-8"))

    def close(self) -> None:
        """Write the trailer (its entry count tells a complete baseline from one cut short)."""
        self._stream.write((json.dumps({"end": True, "entries": self.entries}) + "\n").encode("utf-8"))
        self._stream.close()


def read_baseline(handle: IO[bytes]) -> tuple:
    """(header, entries iterator) of a baseline file; the iterator raises BaselineDamaged at the
    first malformed line or when the trailer is missing (the file was cut short)."""
    stream = gzip.GzipFile(fileobj=handle, mode="rb")
    try:
        first = stream.readline(LINE_LIMIT)
        header = json.loads(first)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise BaselineDamaged(f"not a readable fsaudit baseline: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BaselineDamaged(f"not an fsaudit baseline (expected format {FORMAT})")

    def entries() -> Iterator[Entry]:
        count = 0
        number = 1
        while True:
            number += 1
            try:
                line = stream.readline(LINE_LIMIT)
            except (OSError, EOFError, zlib.error) as error:
                raise BaselineDamaged(f"the baseline is damaged after {count} entries: {error}") from None
            if not line:
                raise BaselineDamaged(
                    f"the baseline ends after {count} entries without its trailer: cut short"
                )
            try:
                record = json.loads(line)
                if record.get("end"):
                    if record.get("entries") != count:
                        raise BaselineDamaged(
                            f"the baseline lists {count} entries but says {record.get('entries')}"
                        )
                    return
                entry = Entry.from_line(record)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise BaselineDamaged(f"line {number} of the baseline is malformed: {error}") from None
            count += 1
            yield entry

    return header, entries()
