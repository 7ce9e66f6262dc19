"""Recording a baseline: every entry below the given paths, files hashed by the reading engine."""

from __future__ import annotations

import os
import socket
from typing import IO, Iterable, Iterator, List, Optional

from fsaudit import outcomes
from fsaudit.hashing import HashRequest, hash_files
from fsaudit.progress import Progress
from fsaudit.target import Target
from fsaudit_checks.baseline.format import BaselineWriter, Entry, entry_kind, header


def _walk_entries(target: Target, paths: Iterable[str], errors: List[str]) -> Iterator[Entry]:
    def onerror(path: bytes, error: OSError) -> None:
        errors.append(f"{target.display(path)}: {error.strerror}")

    for top in paths:
        for directory, entries in target.walk(top, onerror=onerror):
            for entry in sorted(entries, key=lambda e: e.name):
                recorded = _entry(target, directory, entry, errors)
                if recorded is not None:
                    yield recorded


def _entry(target: Target, directory: bytes, entry: os.DirEntry, errors: List[str]) -> Entry | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as error:
        errors.append(f"{target.display(entry.path)}: {error.strerror}")
        return None
    inner = (b"" if directory == b"/" else directory) + b"/" + entry.name
    kind = entry_kind(st.st_mode)
    link = None
    if kind == "link":
        try:
            link = os.readlink(entry.path)
        except OSError:
            link = b""
    return Entry(inner, kind, st.st_size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, link=link)


def create_baseline(
    target: Target, paths: List[str], output: IO[bytes], jobs: int = 1, progress: Optional[Progress] = None
) -> dict:
    """Record every entry below `paths` into `output` (a binary file); returns counts and errors."""
    progress = progress or Progress()
    errors: List[str] = []
    counts = {"entries": 0, "files": 0, "bytes": 0, "unreadable": 0}
    host = socket.gethostname() if target.live else ""
    writer = BaselineWriter(output, header(target.root_text, paths, host))

    def file_requests() -> Iterator[HashRequest]:
        # Directories and symlinks are written as they are met; files once hashed.
        for entry in _walk_entries(target, paths, errors):
            if entry.kind == "file":
                # The size seen by the walk: a sparse file (a VM image) is hashed holes and all.
                yield HashRequest(entry.path, "sha256", expected_size=entry.size, key=entry, follow=False)
            else:
                writer.write(entry)

    progress.start("recording the baseline")
    for result in hash_files(target, file_requests(), jobs):
        entry = result.request.key
        progress.advance()
        if result.digest is None:
            counts["unreadable"] += 1
            errors.append(f"{target.display(entry.path)}: {_not_recorded(result)}")
            continue
        entry.sha256 = result.digest
        counts["files"] += 1
        counts["bytes"] += result.size or 0
        writer.write(entry)
    writer.close()
    progress.stop()
    counts["entries"] = writer.entries
    counts["errors"] = errors
    return counts


def _not_recorded(result) -> str:
    """Why a file's content was not recorded, in words."""
    if result.error is not None:
        return getattr(result.error, "strerror", None) or str(result.error)
    if result.size_differs:
        return "its size changed while it was recorded"
    if result.anomaly is not None:
        return outcomes.anomaly(result)[1]
    return "not read"
