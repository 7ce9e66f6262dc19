"""Reading the audited system's systemd journal through `journalctl --directory -o json`.

Only the journal files inside the audited root are read (`--directory` names them), never this
machine's own journal; journalctl opens them read-only.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator, List

from fsaudit.model import Finding, Severity
from fsaudit.target import Target
from fsaudit_checks.logs.scan import MAX_LINE, Matches, quote
from fsaudit_checks.logs.signatures import match, trigger_positions

if TYPE_CHECKING:  # the checker imports this module
    from fsaudit_checks.logs import LogsChecker


class JournalReader:
    """One journal directory read through `journalctl --directory -o json`, from `since` on."""

    MAX_ENTRY = 1 << 20
    FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,_COMM"

    def __init__(self, checker: LogsChecker, target: Target, directory: str, journalctl: str):
        self.checker = checker
        self.directory = directory
        self.host = target.resolve(directory)
        self.journalctl = journalctl
        self.matches = Matches(checker.settings["max_per_signature"])

    def command(self, fields: bool = True) -> List[str]:
        since = int(self.checker.since.timestamp())
        command = [self.journalctl, f"--directory={os.fsdecode(self.host)}", "--output=json", "--all"]
        command += ["--no-pager", f"--since=@{since}"]
        if fields:
            command.append(f"--output-fields={self.FIELDS}")
        return command

    def read(self) -> Iterator[Finding]:
        entries = 0
        for fields in (True, False):
            with tempfile.TemporaryFile() as errors:
                env = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
                process = subprocess.Popen(
                    self.command(fields), stdout=subprocess.PIPE, stderr=errors, env=env
                )
                try:
                    for raw in self._lines(process.stdout):
                        entries += 1
                        finding = self._entry(raw)
                        if finding is not None:
                            yield finding
                finally:
                    process.stdout.close()
                    process.wait()
                errors.seek(0)
                complaint = " ".join(errors.read(2000).decode("utf-8", "replace").split())
            if process.returncode != 0 and fields and "output-fields" in complaint and entries == 0:
                continue  # an older journalctl: ask for every field instead
            break
        self.checker.count("journal_entries_read", entries)
        for signature, more, last in self.matches.overflow():
            yield self.checker.overflow_finding(os.fsencode(self.directory), signature, more, last)
        if process.returncode != 0 or complaint:
            if process.returncode != 0 or "ignoring file" in complaint:
                # Entries journalctl skipped were not checked.
                reason = f"journalctl could not read all of {self.directory}: {complaint[:200]}"
                self.checker.incomplete(reason)
            yield self.checker.finding(
                "journal-unreadable",
                Severity.WARNING,
                f"journalctl {'failed' if process.returncode else 'complained'} reading this journal: "
                f"{quote(complaint.encode()) or 'exit code ' + str(process.returncode)}",
                path=self.directory,
                details={"exit_code": process.returncode},
                advice="Damaged journal files are skipped by journalctl: check them with "
                "`journalctl --verify --directory=DIR`.",
            )

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

    def _entry(self, raw: bytes) -> Finding | None:
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
        when_text = when.astimezone(self.checker.tz).isoformat(timespec="seconds") if when else ""
        if not self.matches.listed(signature, when_text):
            return None
        cursor = entry.get("__CURSOR")
        details = {
            "cursor": cursor[:200] if isinstance(cursor, str) else None,
            "identifier": identifier or None,
        }
        return self.checker.signature_finding(signature, os.fsencode(self.directory), line, when, details)
