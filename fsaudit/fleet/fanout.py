"""Audits many hosts at once: N ssh sessions at a time on one asyncio loop, each host's result saved
as it arrives, a live progress line, and a clean stop on Ctrl-C (hosts cut short are not recorded,
so `--resume` audits them again)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, TextIO, Tuple

from fsaudit.errors import UsageError
from fsaudit.escape import inert
from fsaudit.fleet.bootstrap import build_zipapp, digest
from fsaudit.fleet.inventory import Host, limit, load_inventory, parse_shard, shard
from fsaudit.fleet.remote import HandshakePacer, HostAudit, HostResult, Limits
from fsaudit.fleet.results import ResultDir
from fsaudit.fleet.ssh import SshSettings, host_audit_args, ssh_argv
from fsaudit.model import Status, worst

LOG = logging.getLogger(__name__)
INDEX_EVERY = 2.0  # seconds between rewrites of index.json while hosts finish
HANDSHAKES_PER_CPU = 3  # ssh connections in their handshake at once, per CPU of the control host


@dataclass
class FleetRun:
    """Everything one `fsaudit fleet` run needs."""

    hosts: List[Host]
    settings: SshSettings
    results: ResultDir
    concurrency: int = 20
    limits: Limits = field(default_factory=Limits)
    resume: bool = False
    info: Dict[str, Any] = field(default_factory=dict)


class ProgressLine:
    """`fleet: 120/1000 done, 50 running, 3 failed; slowest: vm12 95s, vm7 80s` on a terminal."""

    def __init__(self, stream: TextIO, total: int, enabled: bool):
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self.running: Dict[str, float] = {}
        self._last = 0.0

    def started(self, name: str) -> None:
        self.running[name] = time.monotonic()
        self.show()

    def finished(self, name: str, failed: bool) -> None:
        self.running.pop(name, None)
        self.done += 1
        self.failed += failed
        self.show()

    def text(self) -> str:
        now = time.monotonic()
        slowest = sorted(self.running.items(), key=lambda item: item[1])[:3]
        line = f"fleet: {self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed"
        if slowest:
            line += "; slowest: " + ", ".join(f"{inert(name)} {now - since:.0f}s" for name, since in slowest)
        return line

    def show(self, force: bool = False) -> None:
        if not self.enabled or (not force and time.monotonic() - self._last < 0.2):
            return
        self._last = time.monotonic()
        self.stream.write("\r" + self.text()[:200] + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run_fleet(run: FleetRun, stream: TextIO = sys.stderr) -> Tuple[List[HostResult], bool]:
    """Audit `run.hosts`; return every host's result (resumed ones included) and whether the run was
    interrupted."""
    return asyncio.run(_run_fleet(run, stream))


async def _run_fleet(run: FleetRun, stream: TextIO) -> Tuple[List[HostResult], bool]:
    wanted = {host.name for host in run.hosts}
    finished: Dict[str, HostResult] = {}
    if run.resume:
        # A host whose report came back is done; a host that failed is tried again.
        finished = {r.name: r for r in run.results.records() if r.name in wanted and r.outcome == "report"}
    todo = [host for host in run.hosts if host.name not in finished]
    zipapp = build_zipapp() if run.settings.bootstrap and todo else b""
    sha = digest(zipapp)
    progress = ProgressLine(stream, len(todo), enabled=stream.isatty())
    queue: asyncio.Queue = asyncio.Queue()
    for host in todo:
        queue.put_nowait(host)
    state = {"index_written": 0.0}
    pacer = HandshakePacer(max(4, HANDSHAKES_PER_CPU * (os.cpu_count() or 1)))
    loop = asyncio.get_running_loop()

    def write_index(force: bool = False) -> None:
        if force or time.monotonic() - state["index_written"] >= INDEX_EVERY:
            run.results.write_index(run.info, list(finished.values()))
            state["index_written"] = time.monotonic()

    async def worker() -> None:
        while not queue.empty():
            host = queue.get_nowait()
            progress.started(host.name)
            audit = HostAudit(
                host.name, host.address, ssh_argv(host, run.settings, sha), zipapp, run.limits,
                run.results.spool(host.name), pacer,
            )  # fmt: skip
            try:
                result, _ = await audit.run()
            except Exception as error:  # our own bug must cost one host, not the run
                LOG.debug("auditing %s failed", host.name, exc_info=True)
                result = audit.result
                result.outcome, result.status = "internal-error", Status.UNKNOWN.value
                result.message = f"{type(error).__name__}: {error}"
            await loop.run_in_executor(writer, record, result, audit.spool)
            progress.finished(host.name, failed=result.outcome != "report")

    def record(result: HostResult, spool: str) -> None:
        """Save a host's report and record (fsync'ed) and now and then the index, in the writer
        thread: one at a time and in order, while the loop goes on talking to the other hosts."""
        run.results.save(result, spool)
        finished[result.name] = result
        write_index()

    write_index(force=True)
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsaudit-fleet-writer")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.ensure_future(_tick(progress))
    workers = [asyncio.ensure_future(worker()) for _ in range(min(run.concurrency, len(todo)))]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        remaining = set(workers)
        failed = False
        while remaining and not stop.is_set() and not failed:
            done, _ = await asyncio.wait(remaining | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            remaining -= done
            failed = any(not task.cancelled() and task.exception() for task in done - {stopper})
        interrupted = stop.is_set()
        for task in remaining:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for task in workers:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        stopper.cancel()
        ticker.cancel()
        progress.close()
        writer.shutdown(wait=True)  # a host whose audit was cut short while being saved is still saved
        write_index(force=True)
    order = {host.name: i for i, host in enumerate(run.hosts)}
    return sorted(finished.values(), key=lambda r: order.get(r.name, 0)), interrupted


async def _tick(progress: ProgressLine) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress.show(force=True)


def fleet_status(results: List[HostResult]) -> Status:
    """The worst status over the hosts (a host that sent no report is unknown)."""
    return worst(Status(r.status) for r in results)


def summary_line(results: List[HostResult], total: int, out: str, interrupted: bool) -> str:
    """One line for the operator at the end of a run."""
    by_status: Dict[str, int] = {}
    failures: Dict[str, int] = {}
    for result in results:
        by_status[result.status] = by_status.get(result.status, 0) + 1
        if result.outcome != "report":
            failures[result.outcome] = failures.get(result.outcome, 0) + 1
    worst_first = [status.value for status in sorted(Status, key=lambda s: -s.rank)]
    parts = [f"{by_status[s]} {s}" for s in worst_first if by_status.get(s)]
    line = f"fleet: {len(results)}/{total} hosts audited: " + (", ".join(parts) or "none")
    if failures:
        line += " (no report: " + ", ".join(f"{n} {k}" for k, n in sorted(failures.items())) + ")"
    if interrupted:
        line += "; interrupted: run again with --resume to finish"
    return line + f"; results in {inert(out)}"


def audit_fleet(
    inventory: str,
    settings: SshSettings,
    out: str | None,
    concurrency: int,
    limits: Limits,
    resume: bool,
    shard_text: str | None,
    pattern: str | None,
    stream: TextIO = sys.stderr,
) -> int:
    """`fsaudit fleet`: load and select the hosts, audit them, print the summary; the exit code is the
    worst host's (a host that sent no report counts as unknown)."""
    hosts = limit(load_inventory(inventory), pattern)
    chosen_shard = parse_shard(shard_text)
    if chosen_shard:
        hosts = shard(hosts, *chosen_shard)
    if not hosts:
        raise UsageError(f"no host of {inventory} is selected (check --limit and --shard)")
    for host in hosts:
        host_audit_args(host, settings)  # a bad fsaudit_args stops the run before any connection
    out = out or time.strftime("fsaudit-fleet-%Y%m%dT%H%M%S")
    results = ResultDir(out, resume=resume)
    info = {
        "inventory": os.path.abspath(inventory),
        "shard": shard_text,
        "limit": pattern,
        "audit_args": settings.audit_args,
        "become": settings.become,
        "bootstrap": settings.bootstrap,
        "hosts": len(hosts),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        run = FleetRun(hosts, settings, results, concurrency, limits, resume, info)
        finished, interrupted = run_fleet(run, stream)
    finally:
        results.close()
    stream.write(summary_line(finished, len(hosts), out, interrupted) + "\n")
    status = fleet_status(finished)
    if interrupted:
        return 2 if status is Status.CRITICAL else 3
    if len(finished) < len(hosts):
        return 2 if status is Status.CRITICAL else 3
    return status.exit_code
