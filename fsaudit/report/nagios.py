"""The report as a Nagios/Icinga plugin output: one status line with perfdata, then the long text."""

from __future__ import annotations

import re
from collections import Counter
from typing import List

from fsaudit.escape import inert
from fsaudit.model import Report, Status

_NAGIOS_STATES = {
    Status.OK: "OK",
    Status.SKIPPED: "OK",
    Status.WARNING: "WARNING",
    Status.CRITICAL: "CRITICAL",
    Status.UNKNOWN: "UNKNOWN",
}


def _text(value: str) -> str:
    """Audited text for a plugin line: inert, and without `|`, which would start perfdata."""
    return inert(value).replace("|", "/")


def perfdata_label(text: str) -> str:
    """A perfdata label: the plugin guidelines forbid `=` and quotes, and spaces need quoting."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def _summary(report: Report) -> str:
    counts: Counter = Counter()
    for check in report.checks:
        counts.update(check.counts())
    ran = [c for c in report.checks if c.status is not Status.SKIPPED]
    if not ran:
        return "nothing was checked: every check was skipped"
    parts = [f"{counts['critical']} critical", f"{counts['warning']} warning"]
    for status, word in (
        (Status.CRITICAL, "damage in"),
        (Status.UNKNOWN, "could not finish"),
        (Status.WARNING, "warnings in"),
    ):
        names = [_text(c.name) for c in report.checks if c.status is status]
        if names:
            parts.append(f"{word}: {', '.join(names)}")
    skipped = len(report.checks) - len(ran)
    parts.append(
        f"{len(ran)} check{'' if len(ran) == 1 else 's'} ran" + (f", {skipped} skipped" if skipped else "")
    )
    return "; ".join(parts)


def _perfdata(report: Report) -> str:
    totals: Counter = Counter()
    per_check: List[str] = []
    for check in report.checks:
        counts = check.counts()
        totals.update(counts)
        if check.status is Status.SKIPPED:
            continue
        label = perfdata_label(check.name)
        for severity in ("critical", "warning"):
            per_check.append(f"{label}_{severity}={counts[severity]};;;0")
        per_check.append(f"{label}_seconds={check.seconds:.3f}s;;;0")
    overall = [f"{severity}={totals[severity]};;;0" for severity in ("critical", "warning", "info")]
    return " ".join(overall + per_check)


def render_nagios(report: Report, colour: bool = False) -> str:
    """`FSAUDIT CRITICAL - ... | critical=3;;;0 ...`, then one line per check that is not ok."""
    state = _NAGIOS_STATES[report.status]
    host = _text(report.host.get("hostname") or "?")
    where = host if report.root == "/" else f"{host} (root {_text(report.root)})"
    lines = [f"FSAUDIT {state} - {where}: {_summary(report)} | {_perfdata(report)}"]
    for check in report.checks:
        if check.status is Status.OK:
            continue
        counts = check.counts()
        line = f"{check.status.value.upper()} {_text(check.name)}: "
        if check.status is Status.SKIPPED:
            line += _text(check.reason or "skipped")
        else:
            line += f"{counts['critical']} critical, {counts['warning']} warning"
            line += f" ({_text(check.reason)})" if check.reason else ""
        lines.append(line)
    return "\n".join(lines) + "\n"
