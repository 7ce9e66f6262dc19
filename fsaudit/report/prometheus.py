"""The report as node_exporter textfile-collector metrics (Prometheus text exposition format)."""

from __future__ import annotations

from datetime import datetime
from typing import Dict, List, Tuple

from fsaudit.escape import inert
from fsaudit.model import Report, Severity, Status

# The monitoring exit code convention, so `fsaudit_check_status >= 2` reads like the exit code.
_STATUS_VALUES = {Status.OK: 0, Status.SKIPPED: 0, Status.WARNING: 1, Status.CRITICAL: 2, Status.UNKNOWN: 3}

_HELP = {
    "fsaudit_status": "Overall audit status: 0 ok, 1 warning, 2 critical (damage found), 3 unknown.",
    "fsaudit_check_status": "Status of each check: 0 ok or skipped, 1 warning, 2 critical, 3 unknown.",
    "fsaudit_check_skipped": "1 when the check did not run (it does not apply or a module is missing).",
    "fsaudit_findings": "Findings per check and severity (complete counts, also for a cut-short list).",
    "fsaudit_check_duration_seconds": "How long each check ran.",
    "fsaudit_check_items": "The counters each check reports (files verified, files unreadable, ...).",
    "fsaudit_last_audit_timestamp_seconds": "When the last completed audit finished (Unix time); "
    "alert when it is old: the audit stopped running.",
}

Sample = Tuple[Dict[str, str], float]


def _escape(value: str) -> str:
    """A label value: inert (no control character reaches whoever reads the file), then escaped as the
    exposition format wants (backslash, double quote)."""
    return inert(value).replace("\\", "\\\\").replace('"', '\\"')


def _labels(labels: Dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items()) + "}"


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def timestamp(text: str) -> float | None:
    """The Unix time of an ISO 8601 date-time with a zone, or None when it is missing or bad."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _metrics(report: Report) -> Dict[str, List[Sample]]:
    metrics: Dict[str, List[Sample]] = {name: [] for name in _HELP}
    metrics["fsaudit_status"].append(({}, _STATUS_VALUES[report.status]))
    for check in report.checks:
        label = {"check": check.name}
        metrics["fsaudit_check_status"].append((label, _STATUS_VALUES[check.status]))
        metrics["fsaudit_check_skipped"].append((label, 1 if check.status is Status.SKIPPED else 0))
        counts = check.counts()
        for severity in Severity:
            metrics["fsaudit_findings"].append(
                ({**label, "severity": severity.value}, counts[severity.value])
            )
        metrics["fsaudit_check_duration_seconds"].append((label, round(check.seconds, 3)))
        for key, value in sorted(check.stats.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics["fsaudit_check_items"].append(({**label, "item": key}, value))
    finished = timestamp(report.finished)
    # A report without a finish time leaves the metric out, so the staleness alert fires.
    if finished is not None:
        metrics["fsaudit_last_audit_timestamp_seconds"].append(({}, finished))
    return metrics


def render_prometheus(report: Report, colour: bool = False) -> str:
    """Gauges for the textfile collector: write them to `*.prom` atomically (`--output`)."""
    lines = []
    for name, samples in _metrics(report).items():
        if not samples:
            continue
        lines.append(f"# HELP {name} {_HELP[name]}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lines.append(f"{name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"
