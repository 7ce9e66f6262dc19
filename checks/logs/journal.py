"""Reading the audited system's systemd journal through `journalctl --directory -o json`.

Only the journal files inside the audited root are read (`--directory` names them), never this
machine's own journal; journalctl opens them read-only.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, List, Union

from fsaudit.target import Target
from fsaudit_checks.logs.scan import MAX_LINE, Match
from fsaudit_checks.logs.signatures import match, trigger_positions

# journalctl reads tenant data: it gets a clean environment (the shared convention).
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class JournalComplaint:
    """journalctl failed, or complained while reading: what it said, and whether entries were skipped."""

    directory: str
    exit_code: int
    complaint: str
    entries_skipped: bool


class JournalReader:
    """One journal directory read through `journalctl --directory -o json`, from `since` on."""

    MAX_ENTRY = 1 << 20
    FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,_COMM"

    def __init__(self, target: Target, directory: str, journalctl: str, since: datetime):
        self.since = since
        self.entries = 0
        self.directory = directory
        self.host = target.resolve(directory)
        self.journalctl = journalctl

    def command(self, fields: bool = True) -> List[str]:
        since = int(self.since.timestamp())
        command = [self.journalctl, f"--directory={os.fsdecode(self.host)}", "--output=json", "--all"]
        command += ["--no-pager", f"--since=@{since}"]
        if fields:
            command.append(f"--output-fields={self.FIELDS}")
        return command

    def read(self) -> Iterator[Union[Match, JournalComplaint]]:
        """The matching entries, then what journalctl complained about (if it did)."""
        for fields in (True, False):
            returncode, complaint = yield from self._run(fields)
            if returncode != 0 and fields and "output-fields" in complaint and self.entries == 0:
                continue  # an older journalctl: ask for every field instead
            break
        if returncode != 0 or complaint:
            # Entries journalctl skipped were not checked.
            skipped = returncode != 0 or "ignoring file" in complaint
            yield JournalComplaint(self.directory, returncode, complaint, skipped)

    def _run(self, fields: bool):
        """Run journalctl once, yielding the matching entries; returns (exit code, what it said)."""
        env = {"PATH": SAFE_PATH, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self.command(fields), stdout=subprocess.PIPE, stderr=errors, env=env)
            try:
                for raw in self._lines(process.stdout):
                    self.entries += 1
                    found = self._entry(raw)
                    if found is not None:
                        yield found
            finally:
                process.stdout.close()
                process.wait()
            errors.seek(0)
            return process.returncode, " ".join(errors.read(2000).decode("utf-8", "replace").split())

    def _lines(self, stream) -> Iterator[bytes]:
        while True:
            raw = stream.readline(self.MAX_ENTRY)
            if not raw:
                return
            if not raw.endswith(b"\n") and len(raw) == self.MAX_ENTRY:
                while True:  # an entry too large to read: skip the rest of it
                    rest = stream.readline(self.MAX_ENTRY)
                    if not rest or rest.endswith(b"\n"):
                        break
                continue
            yield raw

    def _entry(self, raw: bytes) -> Match | None:
        # JSON escapes quotes and backslashes; a binary MESSAGE is a list of byte values.
        unescaped = raw.replace(b'\\"', b'"').replace(b"\\\\", b"\\")
        if b'"MESSAGE":[' not in raw and not trigger_positions(unescaped):
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(entry, dict):
            return None
        message = entry.get("MESSAGE")
        if isinstance(message, list):
            message = bytes(b & 0xFF for b in message if isinstance(b, int))
        elif isinstance(message, str):
            message = message.encode("utf-8", "surrogateescape")
        else:
            return None
        identifier = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or ""
        line = (
            f"{identifier}: ".encode("utf-8", "surrogateescape") if isinstance(identifier, str) else b""
        ) + message
        signature = match(line[:MAX_LINE])
        if signature is None:
            return None
        try:
            when = datetime.fromtimestamp(int(entry.get("__REALTIME_TIMESTAMP")) / 1e6, timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError):
            when = None
        cursor = entry.get("__CURSOR")
        details = {
            "cursor": cursor[:200] if isinstance(cursor, str) else None,
            "identifier": identifier or None,
        }
        return Match(signature, os.fsencode(self.directory), line, when, details)
