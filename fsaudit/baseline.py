"""Baselines: a record of every file's size, mode, owner, mtime and SHA-256, to compare against later.

The file is gzip-compressed JSON lines: a header, one line per entry in walk order, and a trailer
with the entry count, so a truncated baseline is recognised as such. Written and read streaming.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import stat
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Iterable, Iterator, List, Optional

from fsaudit import __version__
from fsaudit.hashing import HashRequest, hash_files
from fsaudit.model import display_path
from fsaudit.progress import Progress
from fsaudit.target import Target

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


def _walk_entries(target: Target, paths: Iterable[str], errors: List[str]) -> Iterator[Entry]:
    def onerror(path: bytes, error: OSError) -> None:
        errors.append(f"{target.display(path)}: {error.strerror}")

    for top in paths:
        for directory, entries in target.walk(top, onerror=onerror):
            for entry in sorted(entries, key=lambda e: e.name):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as error:
                    errors.append(f"{target.display(entry.path)}: {error.strerror}")
                    continue
                inner = (b"" if directory == b"/" else directory) + b"/" + entry.name
                kind = entry_kind(st.st_mode)
                link = None
                if kind == "link":
                    try:
                        link = os.readlink(entry.path)
                    except OSError:
                        link = b""
                yield Entry(
                    inner, kind, st.st_size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, link=link
                )


def create_baseline(
    target: Target, paths: List[str], output: IO[bytes], jobs: int = 1, progress: Optional[Progress] = None
) -> dict:
    """Record every entry below `paths` into `output` (a binary file); returns counts and errors."""
    progress = progress or Progress()
    errors: List[str] = []
    counts = {"entries": 0, "files": 0, "bytes": 0, "unreadable": 0}
    header = {
        "format": FORMAT,
        "fsaudit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname() if target.live else "",
        "root": target.root_text,
        "paths": list(paths),
    }
    progress.start("recording the baseline")
    with gzip.GzipFile(fileobj=output, mode="wb", compresslevel=6) as stream:

        def write(entry: Entry) -> None:
            counts["entries"] += 1
            stream.write(entry.to_line().encode("utf-8"))

        def file_requests() -> Iterator[HashRequest]:
            # Directories and symlinks are written as they are met; files once hashed.
            for entry in _walk_entries(target, paths, errors):
                if entry.kind == "file":
                    yield HashRequest(entry.path, "sha256", key=entry, follow=False)
                else:
                    write(entry)

        stream.write((json.dumps(header) + "\n").encode("utf-8"))
        for result in hash_files(target, file_requests(), jobs):
            entry = result.request.key
            progress.advance()
            if result.digest is None:
                counts["unreadable"] += 1
                errors.append(
                    f"{target.display(entry.path)}: {getattr(result.error, 'strerror', result.error)}"
                )
                continue
            entry.sha256 = result.digest
            counts["files"] += 1
            counts["bytes"] += result.size or 0
            write(entry)
        stream.write((json.dumps({"end": True, "entries": counts["entries"]}) + "\n").encode("utf-8"))
    progress.stop()
    counts["errors"] = errors
    return counts


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
