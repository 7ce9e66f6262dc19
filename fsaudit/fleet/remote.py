"""One host's audit over ssh: start `ssh`, feed the loader, collect and validate the report, and turn
every way it can go wrong into a clear outcome. Never raises for what happens on the host."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import IO, Callable, List, Tuple

from fsaudit.fleet.bootstrap import MAGIC
from fsaudit.fleet.reader import DEFAULT_MAX_BYTES, read_report
from fsaudit.model import Report, Status

LOG = logging.getLogger(__name__)
STDERR_KEPT = 16384
HELLO_WITHIN = 65536  # bytes of stdout in which the loader's hello must appear
KILL_GRACE = 3.0

# Outcomes other than "report" (the host sent a valid report), each with what it means.
OUTCOMES = {
    "report": "the audit ran and its report came back",
    "unreachable": "ssh could not connect (host down, refused, no route, name unknown)",
    "auth-refused": "the host refused our key or user",
    "host-key-unknown": "the host key is not known (give --accept-new-host-keys to accept new keys)",
    "host-key-changed": "the host key differs from the known one",
    "timeout": "the audit did not finish within --timeout (or its report stopped arriving for "
    "--stall-timeout); it was stopped on the host",
    "no-python": "the host has no python3 to run fsaudit or its bootstrap",
    "python-too-old": "the host's python is older than fsaudit needs (3.9)",
    "not-installed": "fsaudit is not installed on the host and --no-bootstrap was given",
    "become-failed": "sudo -n refused to run the audit as root (--become)",
    "bootstrap-failed": "the zipapp could not be sent to or started on the host",
    "audit-failed": "fsaudit ran on the host but wrote no report (see its stderr)",
    "bad-output": "the host answered something that is not a valid fsaudit report",
    "report-too-large": "the host's report exceeded --max-report-size; it was not kept",
    "internal-error": "fsaudit fleet itself failed on this host (run with --debug for details)",
    "ssh-failed": "ssh failed for another reason (see stderr)",
}
_SSH_ERRORS = (
    ("host-key-changed", r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed"),
    ("host-key-unknown", r"No \S+ host key is known|Host key verification failed"),
    ("auth-refused", r"Permission denied|Too many authentication failures"),
    ("unreachable", r"Connection refused|Connection timed out|No route to host|Could not resolve|"
                    r"Network is unreachable|Connection closed by|Connection reset|"
                    r"kex_exchange_identification"),
)  # fmt: skip


@dataclass
class HostResult:
    """What happened to one host; saved as `hosts/NAME.json` in the result directory."""

    name: str
    address: str
    outcome: str
    status: str
    message: str = ""
    mode: str = ""  # "installed" or "bootstrap": how the audit ran on the host
    python: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    started: str = ""
    finished: str = ""
    stderr: str = ""
    report: str | None = None  # the report's file, relative to the result directory

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HostResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def classify_failure(exit_code: int | None, stderr: str) -> Tuple[str, str]:
    """The outcome and a one-line message for a host that sent no report."""
    marker = re.search(r"^fsaudit-fleet: ([a-z-]+): (.*)$", stderr, re.M)
    if marker:
        kind = marker.group(1)
        return (kind if kind in OUTCOMES else "bootstrap-failed"), marker.group(2)
    if re.search(r"^sudo: ", stderr, re.M):
        return "become-failed", _last_line(stderr, r"^sudo: .*")
    if exit_code == 255:
        for outcome, pattern in _SSH_ERRORS:
            if re.search(pattern, stderr):
                return outcome, _last_line(stderr, pattern)
        return "ssh-failed", _last_line(stderr) or "ssh exited with status 255"
    if exit_code == 127 and re.search(r"python\S*: (command )?not found|No such file", stderr):
        return "no-python", _last_line(stderr)
    if exit_code in (1, 2, 3):
        return "audit-failed", _last_line(stderr) or f"fsaudit exited with status {exit_code} and no report"
    return "bad-output", _last_line(stderr) or f"no report came back (exit status {exit_code})"


def _last_line(text: str, pattern: str = r".+") -> str:
    lines = [line for line in text.splitlines() if re.search(pattern, line)]
    return lines[-1].strip() if lines else ""


def validate_report(handle: IO[bytes], max_bytes: int = DEFAULT_MAX_BYTES) -> Report:
    """The report a host sent (a binary file), checked in bounded memory against the report's format
    and schema (`fsaudit.fleet.reader`): its counts are complete, its findings are not kept.
    ValueError says what is wrong."""
    return read_report(handle, max_bytes, keep=0)


async def _kill(process: asyncio.subprocess.Process) -> None:
    """End `ssh` and anything it started (ProxyCommand...): it runs in its own process group."""
    if process.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
            return
        except asyncio.TimeoutError:
            continue


async def _keep_tail(stream: asyncio.StreamReader, kept: List[bytes]) -> None:
    size = 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        kept.append(chunk)
        size += len(chunk)
        while size > STDERR_KEPT and len(kept) > 1:
            size -= len(kept.pop(0))


class HandshakePacer:
    """Lets only a few ssh connections be in their handshake at once. Key exchange costs CPU (OpenSSH's
    default post-quantum exchange ~0.1 s per connection on the control host): N handshakes started
    together share the CPU and all end late, and as their audits then take about as long, they end
    together too, so every wave of hosts repeats the crowd while the CPU idles in between. Paced, the
    connections spread out and overlap with the other hosts' audits. A connection leaves the handshake
    when the loader's hello arrives, when ssh ends, or after `grace` seconds: a host that does not
    answer must not hold up the others (ssh's own ConnectTimeout still applies to it)."""

    def __init__(self, slots: int, grace: float = 1.0):
        self._slots = asyncio.Semaphore(slots)
        self.grace = grace

    async def enter(self) -> Callable[[], None]:
        """Wait for a free slot; return the function that gives it back (once, however often called)."""
        await self._slots.acquire()
        given_back = False

        def leave() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                timer.cancel()
                self._slots.release()

        timer = asyncio.get_running_loop().call_later(self.grace, leave)
        return leave


def _no_pacer() -> None:
    """The `leave` of a host audited without a pacer."""


class ReportTooLarge(Exception):
    """The host sent more than the report size limit."""


class Stalled(Exception):
    """The host's report began to arrive and then stopped."""


@dataclass
class Limits:
    """What one host may cost the control host: time, silence in mid-report, and report size."""

    timeout: float = 3600.0  # the whole audit of one host
    stall: float = 300.0  # no new byte for this long once the report has begun (it is written at once)
    report_bytes: int = DEFAULT_MAX_BYTES


class HostAudit:
    """Audits one host: `await HostAudit(...).run()` returns the HostResult and the report (its counts
    complete, its findings not kept: the report itself is in the spool file)."""

    def __init__(self, name: str, address: str, argv: List[str], zipapp: bytes | None, limits: Limits,
                 spool: Tuple[int, str], pacer: HandshakePacer | None = None):  # fmt: skip
        self.pacer = pacer
        self._leave_handshake = _no_pacer
        self.result = HostResult(name=name, address=address, outcome="", status=Status.UNKNOWN.value)
        self.argv = argv
        self.zipapp = zipapp
        self.limits = limits
        # where stdout is streamed (a file made with mkstemp), so memory stays flat with large reports
        self.spool_fd, self.spool = spool
        self.stderr: List[bytes] = []
        self.started = 0.0

    async def run(self) -> Tuple[HostResult, Report | None]:
        if self.pacer is not None:
            self._leave_handshake = await self.pacer.enter()
        try:
            return await self._run()
        finally:
            self._leave_handshake()
            self._close_spool()

    async def _run(self) -> Tuple[HostResult, Report | None]:
        self.started = time.monotonic()
        self.result.started = _now()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches us, not ssh: we stop it in order
            )
        except OSError as error:
            self._discard_spool()
            self._finish("ssh-failed", f"cannot run {self.argv[0]}: {error.strerror}")
            return self.result, None
        stderr_task = asyncio.ensure_future(_keep_tail(process.stderr, self.stderr))
        try:
            await asyncio.wait_for(self._converse(process), self.limits.timeout)
        except (asyncio.TimeoutError, Stalled, ReportTooLarge) as error:
            await _kill(process)
            await self._drain(stderr_task)
            self._discard_spool()
            self._finish(*self._cut_short(error))
            return self.result, None
        except BaseException:
            await _kill(process)
            stderr_task.cancel()
            self._discard_spool()
            raise
        await self._drain(stderr_task)
        self.result.exit_code = process.returncode
        # validating a large report takes a while: not on the loop that talks to the other hosts
        reading = asyncio.get_running_loop().run_in_executor(None, self._read_report)
        try:
            report = await asyncio.shield(reading)
        except asyncio.CancelledError:  # Ctrl-C: let the reading end before the spool goes away
            await asyncio.wait({reading})
            self._discard_spool()
            raise
        return self.result, report

    def _cut_short(self, error: BaseException) -> Tuple[str, str]:
        if isinstance(error, ReportTooLarge):
            limit = self.limits.report_bytes
            return "report-too-large", f"the report exceeded {limit:,} bytes (--max-report-size)"
        if isinstance(error, Stalled):
            stall = self.limits.stall
            return "timeout", f"the report stopped arriving for {stall:g} s (--stall-timeout); stopped"
        return "timeout", f"no report after {self.limits.timeout:g} s (--timeout); the audit was stopped"

    async def _drain(self, task: asyncio.Future) -> None:
        try:
            await asyncio.wait_for(task, KILL_GRACE)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
        self.result.stderr = b"".join(self.stderr)[-STDERR_KEPT:].decode("utf-8", "replace")

    async def _hello(self, process: asyncio.subprocess.Process) -> Tuple[bytes | None, bytes]:
        """The loader's hello line and what followed it; (None, everything read) when it never came.
        Lines before it (a shell start-up file that prints) are dropped."""
        buffer = b""
        while len(buffer) < HELLO_WITHIN:
            start = buffer.find(MAGIC.encode())
            if start >= 0 and b"\n" in buffer[start:]:
                line, _, rest = buffer[start:].partition(b"\n")
                return line, rest
            chunk = await process.stdout.read(65536)
            if not chunk:
                break
            buffer += chunk
        return None, buffer

    async def _converse(self, process: asyncio.subprocess.Process) -> None:
        hello, first = await self._hello(process)
        self._leave_handshake()
        spool = open(self.spool_fd, "wb", closefd=False)  # noqa: SIM115 - the descriptor is ours
        with spool:
            if hello is not None:
                words = hello.decode("ascii", "replace").split()
                self.result.mode = "bootstrap" if "need-zip" in words else "installed"
                self.result.python = next((w[7:] for w in words if w.startswith("python=")), "")
                if "need-zip" in words:
                    await self._send_zipapp(process)
            spool.write(first)
            written = len(first)
            while True:
                chunk = await self._next_chunk(process, begun=written > 0)
                if not chunk:
                    break
                written += len(chunk)
                if written > self.limits.report_bytes:
                    raise ReportTooLarge()
                spool.write(chunk)
        await process.wait()
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()

    async def _next_chunk(self, process: asyncio.subprocess.Process, begun: bool) -> bytes:
        """The next piece of the report; once it has begun, its pieces must keep coming: fsaudit
        writes its report at once at the end, so a long pause means a host that hangs mid-report."""
        read = process.stdout.read(1 << 20)
        if not begun:
            return await read
        try:
            return await asyncio.wait_for(read, self.limits.stall)
        except asyncio.TimeoutError:
            raise Stalled() from None

    async def _send_zipapp(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(b"%d\n" % len(self.zipapp or b""))
            process.stdin.write(self.zipapp or b"")
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            LOG.debug("%s: the zipapp could not be sent", self.result.name)

    def _read_report(self) -> Report | None:
        stderr = self.result.stderr
        size = os.fstat(self.spool_fd).st_size
        if size == 0:
            self._discard_spool()
            self._finish(*classify_failure(self.result.exit_code, stderr))
            return None
        try:
            with open(self.spool_fd, "rb", closefd=False) as handle:
                handle.seek(0)
                report = validate_report(handle, self.limits.report_bytes)
        except ValueError as error:
            began = os.pread(self.spool_fd, 120, 0).decode("utf-8", "replace")
            self._discard_spool()
            outcome, message = classify_failure(self.result.exit_code, stderr)
            if outcome in ("bad-output", "audit-failed"):
                outcome, message = "bad-output", f"{error}; output began with {began!r}"
            self._finish(outcome, message)
            return None
        self._finish("report", f"{report.status.value}: {_summary(report)}")
        self.result.status = report.status.value
        return report

    def _discard_spool(self) -> None:
        try:
            os.unlink(self.spool)
        except OSError:
            pass

    def _close_spool(self) -> None:
        if self.spool_fd >= 0:
            os.close(self.spool_fd)
            self.spool_fd = -1

    def _finish(self, outcome: str, message: str) -> None:
        self.result.outcome = outcome
        self.result.message = message
        self.result.status = Status.UNKNOWN.value
        self.result.seconds = round(time.monotonic() - self.started, 3) if self.started else 0.0
        self.result.finished = _now()


def _summary(report: Report) -> str:
    counts = {"critical": 0, "warning": 0}
    for check in report.checks:
        for severity, count in check.counts().items():
            if severity in counts:
                counts[severity] += count
    return (
        f"{counts['critical']} critical, {counts['warning']} warning findings in {len(report.checks)} checks"
    )
