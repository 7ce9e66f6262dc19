"""Checker `logs`: the corruption signatures the system's own logs recorded since the window began.

After lost writes, the kernel, the filesystems and the services often said so in their logs: I/O
errors, "structure needs cleaning", "invalid page in block", POSKeyError, "bad marshal data". This
checker reads the kernel and system logs (and their rotated, compressed copies), the systemd journal
through `journalctl --directory` (the audited system's journal, never this machine's), and the logs of
PostgreSQL, slapd, ZEO/Zope and the web servers, and reports every line that matches a signature of
log_signatures.SIGNATURES, quoting it with its file, line and time.

Logs are read block by block (memory stays flat whatever their size), compressed ones are
decompressed on the fly, and each file is read up to `max_file_mb`.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from typing import Iterator, List

from fsaudit.checker import Checker, Option, Skip
from fsaudit.model import Finding, Severity
from fsaudit.outcomes import not_checked_for_permission
from fsaudit.target import NotRegularFile, Target
from fsaudit_checks.logs.files import MAX_RATIO, Decompressed, compression, decompressed_cap, target_glob
from fsaudit_checks.logs.journal import JournalComplaint, JournalReader
from fsaudit_checks.logs.scan import LogScan, Match, ZeroRuns, quote
from fsaudit_checks.logs.signatures import CODES

# Kernel and system logs, then the logs of the managed services; rotated copies match the `*`.
SYSTEM_LOGS = (
    "/var/log/kern.log*",
    "/var/log/messages*",
    "/var/log/syslog*",
    "/var/log/daemon.log*",
    "/var/log/dmesg*",
    "/var/log/slapd.log*",
    "/var/log/ldap.log*",
)
SERVICE_LOGS = (
    "/var/log/postgresql/*",
    "/var/lib/postgresql/*/*/log/*",
    "/var/lib/postgresql/*/*/pg_log/*",
    "/var/lib/pgsql/data/log/*",
    "/var/lib/pgsql/*/data/log/*",
    "/var/lib/pgsql/data/pg_log/*",
    "/var/log/zope*/*",
    "/var/log/zeo*/*",
    "/var/log/plone*/*",
    "/opt/*/var/log/*",
    "/opt/*/*/var/log/*",
    "/srv/*/var/log/*",
    "/home/*/*/var/log/*",
    "/var/log/nginx/*error*",
    "/var/log/apache2/*error*",
    "/var/log/httpd/*error*",
)
JOURNAL_DIRECTORIES = ("/var/log/journal", "/run/log/journal")
# Access logs are huge and never hold these signatures; the rest are not logs.
SKIPPED_NAMES = ("*access*", "*Z2.log*", "*.pid", "*.lock", "*.sock", "*.journal", "*.journal~")

_DAMAGE_ERRNOS = {errno.EIO, errno.EBADMSG, getattr(errno, "EUCLEAN", 117)}

ADVICE_ZEROS = (
    "Zeros in a text log are blocks the filesystem allocated but whose data never reached the disk: "
    "the storage lost writes around the time of the last good line. Check what else was written then."
)
ADVICE_DAMAGED = "The archived log is damaged: restore it from a backup if its content matters."
ADVICE_JOURNAL = (
    "Read the journal with `journalctl --directory=DIR` by hand, or install journalctl (systemd)."
)


def _matches_any(name: bytes, patterns) -> bool:
    text = os.fsdecode(name)
    return any(fnmatch.fnmatchcase(text, pattern) for pattern in patterns)


class LogsChecker(Checker):
    """Corruption signatures in the kernel, system and service logs since the suspect window began."""

    name = "logs"
    covers = "log files"
    category = "logs"
    options = (
        Option(
            "lookback",
            "days before the window's start to scan from (without a window: days before now; default 30)",
            kind=float,
        ),
        Option("paths", "more log files to scan, inside the audited system (globs allowed)", multiple=True),
        Option("journal", "read the systemd journal with journalctl", kind=bool, default=True),
        Option(
            "max_per_signature",
            "lines listed per signature and log; the rest are counted (the report says how many)",
            kind=int,
            default=20,
        ),
        Option("max_file_mb", "MiB read per log at most (of a plain file: its end)", kind=int, default=1024),
    )
    codes = {
        **CODES,
        "log-zero-filled": "a text log holds runs of zero bytes: blocks allocated whose data never reached "
        "the disk (lost writes or a crash)",
        "log-damaged": "a compressed (rotated) log cannot be decompressed to its end",
        "log-unreadable": "a log could not be read (critical when the filesystem answered with an I/O error)",
        "log-partly-read": "a log is larger than `max_file_mb`: only part of it was read",
        "journal-unreadable": "journalctl is missing, failed, or reported damaged journal files",
    }
    # Lines listed per signature and log; the runner counts the rest (`max_per_signature`).
    cap_by = ("code", "severity", "subject", "path")

    @property
    def cap(self) -> int:
        return self.settings["max_per_signature"]

    def applies(self, target: Target) -> bool:
        if not self.settings["paths"] and not target.exists("/var/log", follow=True):
            raise Skip("no /var/log on this system and no logs.paths given")
        return True

    def run(self, target: Target) -> Iterator[Finding]:
        self._target = target
        self.tz = self.context.timezone or timezone.utc
        self.since = self._since_time()
        self.stats["since"] = self.since.isoformat(timespec="seconds")
        for key in ("logs_read", "logs_older_than_since", "lines_matched", "bytes_read"):
            self.stats[key] = 0
        logs = self._log_files(target)
        self.context.progress.update(total=len(logs), description="logs: reading")
        for path in logs:
            yield from self._read_log(target, path)
            self.context.progress.advance()
        if self.settings["journal"]:
            yield from self._journals(target)

    def _since_time(self) -> datetime:
        lookback = self.settings["lookback"]
        window = self.context.window
        if window is not None and window.start is not None:
            return window.start - timedelta(days=lookback or 0)
        return datetime.now(timezone.utc).astimezone(self.tz) - timedelta(
            days=30 if lookback is None else lookback
        )

    def _log_files(self, target: Target) -> List[bytes]:
        """Every log to read, each once (a symlinked copy is read at its real place)."""
        seen = set()
        logs = []
        for pattern in SYSTEM_LOGS + SERVICE_LOGS + tuple(self.settings["paths"]):
            for path in target_glob(target, pattern):
                if (
                    _matches_any(path.rsplit(b"/", 1)[-1], SKIPPED_NAMES)
                    and pattern not in self.settings["paths"]
                ):
                    continue
                try:
                    real = target.resolve(path)
                    st = os.lstat(real)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) or real in seen:
                    continue
                seen.add(real)
                logs.append(target.inner_path(real))
        return logs

    # -- files ---------------------------------------------------------------------------------------

    def _read_log(self, target: Target, path: bytes) -> Iterator[Finding]:
        try:
            handle = target.open(path)
        except NotRegularFile as error:
            yield self._unreadable(
                path, f"a {error.kind} stands where a log file was expected", Severity.WARNING
            )
            return
        except PermissionError:
            # Permission denied is not damage: counted, and the runner says the check is incomplete.
            not_checked_for_permission(self)
            return
        except OSError as error:
            yield self._unreadable(path, error.strerror or str(error), self._severity(error))
            return
        with handle:
            if handle.st.st_mtime < self.since.timestamp():
                # Last written before the window: none of its lines can be in it.
                self.stats["logs_older_than_since"] += 1
                return
            self.stats["logs_read"] += 1
            reference = datetime.fromtimestamp(handle.st.st_mtime, self.tz)
            try:
                kind = compression(handle.read(6))
                handle.seek(0)
                yield from self._read_stream(path, handle, kind, reference)
            except OSError as error:
                yield self._unreadable(path, error.strerror or str(error), self._severity(error))

    def _read_stream(self, path: bytes, handle, kind: str, reference: datetime) -> Iterator[Finding]:
        cap = max(self.settings["max_file_mb"], 1) << 20
        by_ratio = False
        if kind != "plain":
            cap, by_ratio = decompressed_cap(handle.st.st_size, cap)
        start = 0
        if kind == "plain" and handle.st.st_size > cap:
            # The newest lines matter most: read the end.
            start = handle.st.st_size - cap
            handle.seek(start)
            yield self._partly_read(path, f"only its last {cap >> 20:,} MiB were read", handle.st.st_size)
        if kind == "zstd":
            yield from self._read_zstd(path, handle, reference, cap, by_ratio)
            return
        stream = Decompressed(handle, kind) if kind != "plain" else handle
        scan = self._scan(path, reference, start)
        yield from self._findings(scan.read(stream, cap))
        yield from self._findings(scan.finish())
        self.stats["bytes_read"] += scan.bytes_read
        if kind != "plain" and stream.error:
            yield self._damaged(path, kind, scan.lines, stream.error)
        elif kind != "plain" and scan.truncated:
            yield self._decompressed_cut(path, cap, by_ratio)

    def _decompressed_cut(self, path: bytes, cap: int, by_ratio: bool) -> Finding:
        if not by_ratio:
            return self._partly_read(path, f"only its first {cap >> 20:,} MiB (decompressed) were read", None)
        return self.finding(
            "log-partly-read",
            Severity.WARNING,
            f"only its first {cap >> 20:,} MiB (decompressed) were read: more than {MAX_RATIO:,} times its"
            " compressed size, a decompression bomb or data too repetitive to read in full",
            path=path,
            details={"decompressed_read": cap, "max_ratio": MAX_RATIO},
            advice="Look at this file by hand: a log does not compress this well.",
        )

    def _read_zstd(
        self, path: bytes, handle, reference: datetime, cap: int, by_ratio: bool
    ) -> Iterator[Finding]:
        zstd = shutil.which("zstd")
        if not zstd:
            yield self._unreadable(
                path, "compressed with zstd, and the zstd program is missing", Severity.WARNING
            )
            return
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                [zstd, "-dc", "-q"],
                stdin=handle,
                stdout=subprocess.PIPE,
                stderr=errors,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
            )
            scan = self._scan(path, reference, 0)
            try:
                yield from self._findings(scan.read(process.stdout, cap))
            finally:
                process.stdout.close()
                if process.poll() is None:
                    process.kill()
                process.wait()
            yield from self._findings(scan.finish())
            self.stats["bytes_read"] += scan.bytes_read
            if process.returncode not in (0, -9):
                errors.seek(0)
                yield self._damaged(
                    path, "zstd", scan.lines, errors.read(500).decode("utf-8", "replace").strip()
                )
            elif scan.truncated:
                yield self._decompressed_cut(path, cap, by_ratio)

    # -- the journal ------------------------------------------------------------------------------

    def _journals(self, target: Target) -> Iterator[Finding]:
        for directory in JOURNAL_DIRECTORIES:
            if not self._holds_journal_files(target, directory):
                continue
            journalctl = shutil.which("journalctl") or next(
                (p for p in ("/usr/bin/journalctl", "/bin/journalctl") if os.access(p, os.X_OK)), None
            )
            if journalctl is None:
                self.incomplete(f"the journal in {directory} was not read: journalctl is missing")
                yield self.finding(
                    "journal-unreadable",
                    Severity.WARNING,
                    "the journal was not read: journalctl (systemd) is missing on this machine",
                    path=directory,
                    advice=ADVICE_JOURNAL,
                )
                continue
            reader = JournalReader(target, directory, journalctl, self.since)
            yield from self._findings(reader.read())
            self.count("journal_entries_read", reader.entries)

    def _holds_journal_files(self, target: Target, directory: str) -> bool:
        try:
            names = target.listdir(directory)
        except OSError:
            return False
        for name in names[:1000]:
            if name.endswith(b".journal"):
                return True
            try:
                inner = target.listdir(directory + "/" + os.fsdecode(name))
            except OSError:
                continue
            if any(n.endswith((b".journal", b".journal~")) for n in inner[:10_000]):
                return True
        return False

    # -- findings ------------------------------------------------------------------------------------

    def _scan(self, path: bytes, reference: datetime, start: int) -> LogScan:
        return LogScan(path, reference, start, start == 0, self.tz, self.since)

    def _findings(self, problems) -> Iterator[Finding]:
        """The findings of what the log readers found (plain problems)."""
        for problem in problems:
            if isinstance(problem, Match):
                yield self._signature_finding(problem)
            elif isinstance(problem, ZeroRuns):
                yield self._zero_finding(problem)
            elif isinstance(problem, JournalComplaint):
                yield self._journal_finding(problem)

    def _signature_finding(self, found: Match) -> Finding:
        signature, when, details = found.signature, found.when, found.details
        self.stats["lines_matched"] += 1
        time_text = when.astimezone(self.tz).isoformat(timespec="seconds") if when else None
        where = f"line {details['line_number']:,}" if details.get("line_number") else "an entry"
        at = f" at {time_text}" if time_text else " (time unknown)"
        quoted = quote(found.line)
        return self.finding(
            signature.code,
            signature.severity,
            f"{where}{at}: {signature.meaning}: {quoted}",
            path=found.log,
            subject=signature.name,
            details={"signature": signature.name, "line": quoted, "time": time_text, **details},
            advice=signature.advice,
        )

    def _severity(self, error: OSError) -> Severity:
        return Severity.CRITICAL if error.errno in _DAMAGE_ERRNOS else Severity.WARNING

    def _unreadable(self, path: bytes, reason: str, severity: Severity) -> Finding:
        self.count("logs_unreadable")
        return self.finding(
            "log-unreadable",
            severity,
            f"could not be read: {reason}",
            path=path,
            advice="Read this log by hand if it matters; an I/O error here means the disk is failing."
            if severity is Severity.CRITICAL
            else "",
        )

    def _damaged(self, path: bytes, kind: str, lines: int, error) -> Finding:
        return self.finding(
            "log-damaged",
            Severity.WARNING,
            f"the {kind} data is damaged after line {lines:,}: {error}; the lines before it were checked",
            path=path,
            details={"compression": kind, "lines_read": lines},
            advice=ADVICE_DAMAGED,
        )

    def _partly_read(self, path: bytes, what: str, size) -> Finding:
        return self.finding(
            "log-partly-read",
            Severity.WARNING,
            f"{what} (logs.max_file_mb)",
            path=path,
            details={"size": size, "max_file_mb": self.settings["max_file_mb"]},
            advice="Raise logs.max_file_mb to read all of it.",
        )

    def _zero_finding(self, found: ZeroRuns) -> Finding:
        return self.finding(
            "log-zero-filled",
            Severity.WARNING,
            f"{found.zero_bytes:,} zero bytes in {found.runs:,} runs, the first at offset {found.first:,}",
            path=found.log,
            details={"first_offset": found.first, "runs": found.runs, "zero_bytes": found.zero_bytes},
            advice=ADVICE_ZEROS,
        )

    def _journal_finding(self, found: JournalComplaint) -> Finding:
        if found.entries_skipped:
            complaint = found.complaint[:200]
            self.incomplete(f"journalctl could not read all of {found.directory}: {complaint}")
        said = quote(found.complaint.encode()) or f"exit code {found.exit_code}"
        return self.finding(
            "journal-unreadable",
            Severity.WARNING,
            f"journalctl {'failed' if found.exit_code else 'complained'} reading this journal: {said}",
            path=found.directory,
            details={"exit_code": found.exit_code},
            advice="Damaged journal files are skipped by journalctl: check them with "
            "`journalctl --verify --directory=DIR`.",
        )
