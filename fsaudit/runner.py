"""Runs the selected checkers one after the other, each in isolation, and builds the Report."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple

from fsaudit import __version__
from fsaudit.checker import Checker, Context, Skip
from fsaudit.model import NOTHING_FOUND, CheckResult, Finding, NotListed, Report, Severity, Status
from fsaudit.outcomes import NOT_CHECKED_PERMISSION, permission_reason
from fsaudit.registry import Entry
from fsaudit.target import Target
from fsaudit.window import target_timezone

LOG = logging.getLogger(__name__)

# A check that finds more than this keeps counting but stops listing (the report says `truncated`).
MAX_FINDINGS = 200_000


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def host_info(target: Target) -> Dict[str, str]:
    """Hostname, machine-id and OS name of the audited system, read from its files under `--root`
    (`fsaudit repair` refuses a report whose hostname and machine-id are not its machine's)."""
    hostname = ""
    if not target.live:
        try:
            hostname = target.read_text("/etc/hostname", limit=256).strip().splitlines()[0]
        except (OSError, IndexError):
            hostname = ""
    if not hostname:
        hostname = os.uname().nodename if target.live else os.path.basename(target.root_text)
    os_name = ""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = target.read_text(path, limit=16384)
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip("\"'")
        if os_name:
            break
    if not os_name and target.live:
        system = os.uname()
        os_name = f"{system.sysname} {system.release}"
    info = {"hostname": hostname, "os": os_name}
    try:
        machine_id = target.read_text("/etc/machine-id", limit=256).strip().lower()
    except OSError:
        machine_id = ""
    if re.match(r"^[0-9a-f]{32}$", machine_id):
        info["machine_id"] = machine_id
    return info


def missing_module(checker: type) -> str | None:
    """The first module in `checker.requires` that cannot be imported here, if any."""
    for module in checker.requires:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def install_hint(checker: type, module: str) -> str:
    extra = f"'fsaudit[{checker.extra}]'" if checker.extra else module
    return f"needs the Python module {module}: pip install {extra}"


class Listing:
    """The cap a checker declares (`cap`, `cap_by`): the first `cap` findings of each group are
    listed, the rest only counted, with the message of the last one kept for the report."""

    def __init__(self, cap: int, fields: Tuple[str, ...]):
        self.cap = max(0, int(cap or 0))
        self.fields = tuple(fields)
        self.seen: Dict[tuple, int] = {}
        self.unlisted: Dict[tuple, NotListed] = {}

    def admit(self, finding: Finding) -> bool:
        """Whether `finding` is listed; when not, it is counted in its group."""
        if not self.cap:
            return True
        key = tuple(getattr(finding, name) for name in self.fields)
        seen = self.seen.get(key, 0) + 1
        self.seen[key] = seen
        if seen <= self.cap:
            return True
        group = self.unlisted.get(key)
        if group is None:
            group = self.unlisted[key] = NotListed(finding.code, finding.severity, 0)
            group.path = finding.path if "path" in self.fields else None
            group.subject = finding.subject if "subject" in self.fields else None
        group.count += 1
        group.last = finding.message
        return False

    def not_listed(self) -> List[NotListed]:
        return list(self.unlisted.values())


def run_check(checker: Checker, target: Target, max_findings: int = MAX_FINDINGS) -> CheckResult:
    """Run one checker to the end, whatever it does: a crash becomes status `unknown`."""
    result = CheckResult(
        name=checker.name, status=Status.OK, covers=checker.covers, category=checker.category
    )
    started = time.monotonic()
    drops_before = target.cache_drop_failures
    by_severity = {s.value: 0 for s in Severity}
    listing = Listing(checker.cap, checker.cap_by)
    interrupted = False
    try:
        module = missing_module(type(checker))
        if module:
            raise Skip(install_hint(type(checker), module))
        if checker.applies(target) is False:
            raise Skip("does not apply to this system")
        for finding in checker.run(target):
            by_severity[finding.severity] += 1  # a str enum: the same key as its value
            if not listing.admit(finding):
                continue
            if len(result.findings) < max_findings:
                result.findings.append(finding)
            else:
                result.truncated = True
    except Skip as skip:
        _not_run(checker, target, result, str(skip) or "does not apply")
    except KeyboardInterrupt:
        checker.incomplete("interrupted before the check finished")
        interrupted = True
    except ImportError as error:
        name = getattr(error, "name", None) or ""
        if name and name.split(".")[0] in checker.requires:
            _not_run(checker, target, result, install_hint(type(checker), name))
        else:
            LOG.debug("checker %s failed", checker.name, exc_info=True)
            checker.incomplete(f"the check failed: {type(error).__name__}: {error}")
    except Exception as error:
        LOG.debug("checker %s failed", checker.name, exc_info=True)
        checker.incomplete(f"the check failed: {type(error).__name__}: {error}")
    denied = checker.stats.get(NOT_CHECKED_PERMISSION)
    if isinstance(denied, int) and denied > 0:
        checker.incomplete(permission_reason(denied))
    if result.status is not Status.SKIPPED:
        result.status = _status(by_severity, checker.incomplete_reasons)
        result.reason = "; ".join(checker.incomplete_reasons)
        if result.status is Status.OK and not _counted_anything(checker.stats):
            result.reason = NOTHING_FOUND
    result.seconds = time.monotonic() - started
    result.stats = dict(checker.stats)
    result.not_listed = listing.not_listed()
    if result.truncated:
        result.stats["findings_by_severity"] = by_severity
    if target.cache_drop_failures > drops_before:
        result.stats["page_cache_not_dropped"] = target.cache_drop_failures - drops_before
    if interrupted:
        raise _Interrupted(result)
    return result


def _not_run(checker: Checker, target: Target, result: CheckResult, reason: str) -> None:
    """A check that could not run: `skipped` when there is nothing of its kind here, `unknown`
    (through `incomplete`) when its subject is here but cannot be checked."""
    try:
        here = checker.present(target)
    except Exception:  # a bug in present() must not turn "not checked" into a crash
        LOG.debug("present() of %s failed", checker.name, exc_info=True)
        here = ""
    if here:
        checker.incomplete(f"not checked: {reason} ({here} is on this system)")
    else:
        result.status = Status.SKIPPED
        result.reason = reason


def _counted_anything(stats: Dict[str, Any]) -> bool:
    """Whether a check's counters say it looked at something (a file, a database, a repository)."""
    return any(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        for value in stats.values()
    )


class _Interrupted(Exception):
    def __init__(self, result: CheckResult):
        super().__init__("interrupted")
        self.result = result


def _status(by_severity: Dict[str, int], incomplete: List[str]) -> Status:
    if by_severity["critical"]:
        return Status.CRITICAL
    if incomplete:
        return Status.UNKNOWN
    if by_severity["warning"]:
        return Status.WARNING
    return Status.OK


def run_audit(
    target: Target,
    selected: List[Tuple[Entry, Dict[str, Any]]],
    context: Context | None = None,
) -> Tuple[Report, bool]:
    """Run every selected checker (entry + validated settings); return the Report and whether the
    user interrupted it (the checks not reached are then `unknown`)."""
    context = context or Context()
    context.progress = GuardedProgress.around(context.progress)
    if context.timezone is None:  # a caller without fsaudit.settings (a library, a test)
        context.timezone = target_timezone(target)
    report = Report(
        host=host_info(target),
        root=target.root_text,
        started=_now(),
        finished="",
        window=context.window.to_dict() if context.window else None,
        fsaudit_version=__version__,
        uid=os.geteuid(),
    )
    interrupted = False
    for entry, settings in selected:
        if interrupted:
            report.checks.append(
                CheckResult(entry.name, Status.UNKNOWN, reason="not run: the audit was interrupted")
            )
            continue
        if entry.checker is None:
            report.checks.append(CheckResult(entry.name, Status.UNKNOWN, reason=entry.error))
            continue
        checker = entry.checker(settings, context)
        context.progress.start(f"{entry.name}: checking")
        try:
            result = run_check(checker, target)
        except _Interrupted as stop:
            result = stop.result
            interrupted = True
        finally:
            context.progress.stop()
        report.checks.append(result)
    report.finished = _now()
    report.interrupted = interrupted
    return report, interrupted


class GuardedProgress:
    """The progress display, kept from ending an audit: the first error it raises (a terminal gone,
    a name it cannot show) is logged and switches it off; the checks and the report go on."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._failed = False

    @classmethod
    def around(cls, progress: Any) -> GuardedProgress:
        return progress if isinstance(progress, cls) else cls(progress)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def guarded(*args, **kwargs):
            if self._failed:
                return None
            try:
                return value(*args, **kwargs)
            except Exception:
                LOG.debug("the progress display failed; it is switched off", exc_info=True)
                self._switch_off()
                return None

        # Kept: the engine calls add_bytes once per file read, 25,000 times in a small audit.
        self.__dict__[name] = guarded
        return guarded

    def _switch_off(self) -> None:
        self._failed = True
        try:
            self._inner.stop()
        except Exception:
            LOG.debug("stopping the failed progress display failed too", exc_info=True)
