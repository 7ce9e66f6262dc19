"""The report as text for a person at a terminal: the verdict first, then what to do, then details.

Every string that came from the audited system (names, paths, messages, stats) goes through `inert`,
so that it can neither drive the terminal nor start a line of its own."""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Dict, List

from fsaudit.escape import inert
from fsaudit.model import CheckResult, Finding, Report, Severity, Status
from fsaudit.report.facts import group_count, listed_count, not_listed_text

# Findings listed per code before the rest is summarised by a count.
LIST_LIMIT = 10

_COLOURS = {
    "critical": "\033[1;31m",
    "unknown": "\033[1;35m",
    "warning": "\033[33m",
    "ok": "\033[32m",
    "skipped": "\033[2m",
    "info": "\033[36m",
}
_RESET = "\033[0m"

_VERDICTS = {
    Status.CRITICAL: "damage found",
    Status.UNKNOWN: "the audit could not check everything",
    Status.WARNING: "no damage found, but some things need a look",
    Status.OK: "no damage found",
    Status.SKIPPED: "nothing was checked",
}


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def verdict(report: Report) -> str:
    """One line: the status, what it means, and the counts behind it."""
    counts: Counter = Counter()
    for check in report.checks:
        counts.update(check.counts())
    ran = [c for c in report.checks if c.status is not Status.SKIPPED]
    status = report.status if ran else Status.SKIPPED
    parts = [_plural(counts["critical"], "critical finding"), _plural(counts["warning"], "warning")]
    unfinished = sum(1 for c in report.checks if c.status is Status.UNKNOWN)
    if unfinished:
        parts.append(f"{_plural(unfinished, 'check')} could not finish")
    skipped = len(report.checks) - len(ran)
    parts.append(f"{_plural(len(ran), 'check')} ran" + (f", {skipped:,} skipped" if skipped else ""))
    host = inert(report.host.get("hostname") or "?")
    where = host if report.root == "/" else f"{host} (root {inert(report.root)})"
    return f"{status.value.upper()}: {_VERDICTS[status]} on {where}: {', '.join(parts)}"


class _Painter:
    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, key: str, text: str) -> str:
        if not self.colour or key not in _COLOURS:
            return text
        return f"{_COLOURS[key]}{text}{_RESET}"


def _finding_line(finding: Finding) -> str:
    where = finding.path or finding.subject or ""
    about = f" ({finding.subject})" if finding.path and finding.subject else ""
    lead = f"{where}{about}: " if where else ""
    return inert(f"{lead}{finding.message}")


def _grouped(findings: List[Finding]) -> OrderedDict[tuple, List[Finding]]:
    groups: OrderedDict[tuple, List[Finding]] = OrderedDict()
    for finding in sorted(findings, key=lambda f: -f.severity.rank):
        groups.setdefault((finding.severity, finding.code), []).append(finding)
    return groups


def _stats_line(check: CheckResult) -> str:
    shown = [
        f"{key.replace('_', ' ')}: {value:,}"
        if isinstance(value, int)
        else f"{key.replace('_', ' ')}: {value}"
        for key, value in check.stats.items()
        if isinstance(value, (int, float, str)) and not isinstance(value, bool)
    ]
    return inert("; ".join(shown))


def _check_lines(check: CheckResult, paint: _Painter) -> List[str]:
    status = paint(check.status.value, check.status.value.upper())
    lines = [f"{status:<10} {inert(check.name)}  ({check.seconds:.1f} s)"]
    if check.reason:
        lines.append(f"    {inert(check.reason)}")
    stats = _stats_line(check)
    if stats:
        lines.append(f"    {stats}")
    if check.stats.get("page_cache_not_dropped"):
        lines.append(
            "    note: cached pages could not be dropped for some files, so they may have been read "
            "from memory rather than from the disk"
        )
    for (severity, code), group in _grouped(check.findings).items():
        count = group_count(check, severity, code, len(group))
        lines.append(f"    {paint(severity.value, severity.value)} {inert(code)}: {count:,}")
        for finding in group[:LIST_LIMIT]:
            lines.append(f"      {_finding_line(finding)}")
        listed = listed_count(check, severity, code, len(group))
        if listed > LIST_LIMIT:
            lines.append(f"      ... and {listed - LIST_LIMIT:,} more (the JSON report lists them all)")
        for unlisted in check.unlisted(severity, code):
            lines.append(f"      ... and {inert(not_listed_text(unlisted))}")
    if check.truncated:
        lines.append("    (more findings than could be listed; the counts above are complete)")
    return lines


def _advice_lines(report: Report) -> List[str]:
    advice: Dict[str, int] = {}
    for finding in report.findings():
        if finding.advice and finding.severity is not Severity.INFO:
            advice[finding.advice] = advice.get(finding.advice, 0) + 1
    if not advice:
        return []
    lines = ["", "What to do:"]
    ranked = sorted(advice.items(), key=lambda item: -item[1])
    for text, count in ranked[: LIST_LIMIT * 2]:
        lines.append(f"  - {inert(text)}" + (f" ({count:,} findings)" if count > 1 else ""))
    if len(ranked) > LIST_LIMIT * 2:
        lines.append(f"  ... and {len(ranked) - LIST_LIMIT * 2:,} more actions (see the JSON or HTML report)")
    return lines


def render_text(report: Report, colour: bool = False) -> str:
    paint = _Painter(colour)
    lines = [paint(report.status.value, verdict(report))]
    header = f"host {report.host.get('hostname', '?')}"
    if report.host.get("os"):
        header += f", {report.host['os']}"
    header += f"; audited {report.started}"
    if report.window:
        header += (
            f"; suspect window {report.window.get('start') or '...'} .. {report.window.get('end') or 'now'}"
        )
    if report.uid:
        header += f"; run as uid {report.uid}, not root: files it could not read were not checked"
    if report.interrupted:
        header += "; interrupted: the checks not finished are incomplete"
    lines.append(inert(header))
    lines.extend(_advice_lines(report))
    lines.append("")
    for check in report.checks:
        lines.extend(_check_lines(check, paint))
    return "\n".join(lines) + "\n"
