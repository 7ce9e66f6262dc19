"""The report as one self-contained HTML page for the VM's owner: verdict, what to do, then details."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import List

from fsaudit.errors import FsauditError
from fsaudit.model import Report, Severity, Status
from fsaudit.report import facts

# Rows listed per finding code; past that the page says how many more the JSON report has.
HTML_LIST_LIMIT = 2000
ADVICE_LIMIT = 30
GROUP_ADVICE_LIMIT = 5  # distinct advice texts a group of findings states once, above its list

_HEADLINES = {
    Status.CRITICAL: "Damage found",
    Status.UNKNOWN: "The audit could not check everything",
    Status.WARNING: "No damage found, but some things need a look",
    Status.OK: "No damage found",
    Status.SKIPPED: "Nothing was checked",
}


def require_jinja2():
    """The jinja2 module, or an error with the install hint (checked before an audit starts)."""
    try:
        import jinja2
    except ImportError:
        raise FsauditError(
            "the HTML report needs the Python module jinja2: pip install 'fsaudit[html]'"
        ) from None
    return jinja2


def environment():
    jinja2 = require_jinja2()
    # Autoescape everything: file names, messages and details come from a possibly damaged system.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fsaudit.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# Words for a reader who is not an engineer; the JSON report keeps the exact status names.
LABELS = {
    "critical": "damaged",
    "warning": "to check",
    "info": "note",
    "unknown": "incomplete",
    "ok": "ok",
    "skipped": "not run",
}


def readable_time(text: str | None) -> str:
    """`2026-06-02T00:00:00+02:00` as `2026-06-02 00:00 (UTC+02:00)`; other text as it is."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    shown = moment.strftime("%Y-%m-%d %H:%M" if moment.second == 0 else "%Y-%m-%d %H:%M:%S")
    if moment.tzinfo is not None:
        offset = moment.strftime("%z")
        shown += f" (UTC{offset[:3]}:{offset[3:]})"
    return shown


def _checks(report: Report) -> List[dict]:
    rows = []
    for check in sorted(report.checks, key=lambda c: -c.status.rank):
        groups = []
        for (severity, code), findings in facts.grouped_findings(check).items():
            count = facts.group_count(check, severity, code, len(findings))
            listed = facts.listed_count(check, severity, code, len(findings))
            advice = Counter(f.advice for f in findings if f.advice)
            groups.append(
                {
                    "severity": severity.value,
                    "code": code,
                    "count": count,
                    "findings": findings[:HTML_LIST_LIMIT],
                    "more": max(0, listed - min(len(findings), HTML_LIST_LIMIT)),
                    "not_listed": [facts.not_listed_text(g) for g in check.unlisted(severity, code)],
                    # Said once for the group when a few texts cover it, not on each of 1,293 rows.
                    "advice": advice.most_common() if len(advice) <= GROUP_ADVICE_LIMIT else [],
                    "advice_per_finding": len(advice) > GROUP_ADVICE_LIMIT,
                }
            )
        rows.append(
            {
                "name": check.name,
                "phrase": facts.capital(facts.check_phrase(check)),
                "status": check.status.value,
                "reason": check.reason,
                "seconds": check.seconds,
                "counts": check.counts(),
                "stats": facts.stat_items(check),
                "truncated": check.truncated,
                "page_cache_not_dropped": check.stats.get("page_cache_not_dropped"),
                "groups": groups,
                "open": check.status in (Status.CRITICAL, Status.UNKNOWN),
            }
        )
    return rows


def _who(report: Report) -> str:
    """Whose audit it was, for a reader who does not know uids."""
    if report.uid is None:
        return ""
    if report.uid == 0:
        return "the administrator (root)"
    return f"user {report.uid}, not the administrator: files only the administrator may read were not checked"


def render_html(report: Report, colour: bool = False) -> str:
    ran = [c for c in report.checks if c.status is not Status.SKIPPED]
    status = report.status if ran else Status.SKIPPED
    damage = facts.package_damage(report)
    advice = facts.advice_groups(report, skip_packages=True)
    unchecked, absent = facts.unchecked(report)
    jinja = environment()
    jinja.filters["when"] = readable_time
    jinja.filters["label"] = lambda value: LABELS.get(value, value)
    template = jinja.get_template("report.html")
    return template.render(
        report=report,
        status=status.value,
        headline=_HEADLINES[status],
        verdict=facts.verdict_sentences(report),
        counts=facts.total_counts(report),
        packages=damage.packages,
        package_files=damage.files,
        advice=[(text, severity.value, count) for text, severity, count in advice[:ADVICE_LIMIT]],
        advice_more=max(0, len(advice) - ADVICE_LIMIT),
        unchecked=unchecked,
        absent=[facts.check_phrase(check) for check in absent],
        hints=[(row.name, row.hint) for row in unchecked if row.hint]
        + [(check.name, check.reason or "skipped") for check in absent],
        who=_who(report),
        checks=_checks(report),
        critical=Severity.CRITICAL.value,
    )


# Asked before an audit starts (fsaudit.report.check_format): the page cannot be made without jinja2.
render_html.require = require_jinja2  # type: ignore[attr-defined]
