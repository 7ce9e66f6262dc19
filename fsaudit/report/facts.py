"""Generic facts about a report that several renderers put into words; no checker is special here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from fsaudit.model import NOTHING_FOUND, CheckResult, Finding, NotListed, Report, Severity, Status
from fsaudit.outcomes import NOT_CHECKED_PERMISSION, permission_reason


def plural(count: int, word: str, many: str = "") -> str:
    """`1 file`, `2 files`, `1,204 files` (`many` for irregular plurals)."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {many or word + 's'}"


def check_phrase(check: CheckResult) -> str:
    """What a check covers in a customer's words, as the checker declared it (`covers`)."""
    return check.covers or f"the {check.name} check"


@dataclass
class PackageDamage:
    """Damaged files that belong to packages: the package manager can restore them."""

    files: int = 0
    packages: List[str] = field(default_factory=list)
    checks: List[str] = field(default_factory=list)


def package_damage(report: Report) -> PackageDamage:
    """Critical findings that name a package (`details.package`): what a reinstall restores."""
    damage = PackageDamage()
    packages: Dict[str, None] = {}
    for check in report.checks:
        found = False
        for finding in check.findings:
            if is_package_damage(finding):
                damage.files += 1
                packages[finding.details["package"]] = None
                found = True
        if found:
            damage.checks.append(check.name)
    damage.packages = sorted(packages)
    return damage


def total_counts(report: Report) -> Dict[str, int]:
    counts: Counter = Counter()
    for check in report.checks:
        counts.update(check.counts())
    return {s.value: counts[s.value] for s in Severity}


def is_package_damage(finding: Finding) -> bool:
    """A critical finding on a file that a package manager can restore."""
    package = finding.details.get("package") if isinstance(finding.details, dict) else None
    return finding.severity is Severity.CRITICAL and isinstance(package, str) and bool(package)


def advice_groups(
    report: Report, limit: int = 0, skip_packages: bool = False
) -> List[Tuple[str, Severity, int]]:
    """Distinct advice texts, worst severity first, then the most frequent: what to do, in order.
    `skip_packages` leaves out the advice of package damage, for a reader told to reinstall them."""
    grouped: Dict[str, List] = {}
    for finding in report.findings():
        if not finding.advice or finding.severity is Severity.INFO:
            continue
        if skip_packages and is_package_damage(finding):
            continue
        entry = grouped.setdefault(finding.advice, [finding.severity, 0])
        if finding.severity.rank > entry[0].rank:
            entry[0] = finding.severity
        entry[1] += 1
    ranked = sorted(grouped.items(), key=lambda item: (-item[1][0].rank, -item[1][1], item[0]))
    rows = [(text, severity, count) for text, (severity, count) in ranked]
    return rows[:limit] if limit else rows


def grouped_findings(check: CheckResult) -> Dict[Tuple[Severity, str], List[Finding]]:
    """A check's findings by (severity, code), worst first."""
    groups: Dict[Tuple[Severity, str], List[Finding]] = {}
    for finding in sorted(check.findings, key=lambda f: -f.severity.rank):
        groups.setdefault((finding.severity, finding.code), []).append(finding)
    return groups


def listed_count(check: CheckResult, severity: Severity, code: str, listed: int) -> int:
    """How many findings of (severity, code) the report lists: `listed`, unless the list was cut when
    the report was loaded (then the full count loaded with it)."""
    return max(listed, check.group_counts.get((severity.value, code), 0))


def group_count(check: CheckResult, severity: Severity, code: str, listed: int) -> int:
    """How many findings of (severity, code) the check made: those listed and those past its cap."""
    unlisted = sum(group.count for group in check.unlisted(severity, code))
    return listed_count(check, severity, code, listed) + unlisted


def not_listed_text(group: NotListed) -> str:
    """`1,204 more in /var/log/kern.log (buffer-io-error), not listed; the last: ...` (raw: escape it)."""
    where = " ".join(part for part in (group.path, f"({group.subject})" if group.subject else "") if part)
    where = f" in {where}" if where else ""
    last = f"; the last: {group.last}" if group.last else ""
    return f"{group.count:,} more{where}, counted but not listed by the check{last}"


def unverified_items(check: CheckResult) -> List[str]:
    """What a check counted as not read or not verified (`*unreadable*`, `*not_verified*`, `*unverified*`
    counters), as `1,204 files not verified`."""
    items = []
    for key, value in check.stats.items():
        counted = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if counted and ("unreadable" in key or "not_verified" in key or "unverified" in key):
            items.append(f"{value:,} {key.replace('_', ' ')}")
    return items


@dataclass
class Unchecked:
    """Something a check did not check, said twice: in plain words for the owner of the system, and
    as the check's own reason for the operator (which may name options and sockets)."""

    name: str
    what: str
    plain: str
    hint: str


def unchecked(report: Report) -> Tuple[List[Unchecked], List[CheckResult]]:
    """(what was not checked, or not to the end, or found nothing to check; the checks that were
    not part of this audit or had nothing of their kind on the system). Silence is not health."""
    rows: List[Unchecked] = []
    absent: List[CheckResult] = []
    for check in report.checks:
        what = capital(check_phrase(check))
        if check.status is Status.SKIPPED:
            absent.append(check)
            continue
        hint = check.reason
        denied = check.stats.get(NOT_CHECKED_PERMISSION)
        if isinstance(denied, int) and not isinstance(denied, bool) and denied > 0:
            plain = (
                f"{plural(denied, 'file')} could not be read without administrator rights, "
                f"so {'it was' if denied == 1 else 'they were'} not checked."
            )
            rows.append(Unchecked(check.name, what, plain, hint))
            hint = ""
            if check.reason == permission_reason(denied):
                continue
        if check.status is Status.UNKNOWN:
            plain = "not checked to the end: damage there may be missing from this report."
            rows.append(Unchecked(check.name, what, plain, hint or "unknown"))
        elif check.reason == NOTHING_FOUND:
            rows.append(Unchecked(check.name, what, "none were found on this system to check.", hint))
        elif check.reason:
            rows.append(Unchecked(check.name, what, check.reason, hint))
        unverified = unverified_items(check)
        if unverified:
            plain = f"{', '.join(unverified)}: these could not be read or verified."
            rows.append(Unchecked(check.name, what, plain, ""))
    return rows, absent


def stat_items(check: CheckResult) -> List[Tuple[str, str]]:
    """A check's counters as (label, value) text."""
    items = []
    for key, value in check.stats.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        text = f"{value:,}" if isinstance(value, int) else str(value)
        items.append((key.replace("_", " "), text))
    return items


def verdict_sentences(report: Report) -> List[str]:
    """The verdict for a reader who is not an engineer, one sentence per fact, worst first."""
    sentences: List[str] = []
    damage = package_damage(report)
    if damage.files:
        # Under --root the system is an image mounted here: a reinstall must happen inside the VM,
        # or `fsaudit repair` restores the files from the image's own package cache.
        image = report.root != "/"
        where = " inside the VM" if image else ""
        host = f" (from this host: fsaudit repair REPORT.json --root {report.root})" if image else ""
        sentences.append(
            f"{plural(damage.files, 'system file')} {'was' if damage.files == 1 else 'were'} damaged; "
            f"reinstalling {plural(len(damage.packages), 'package')} "
            f"({_short_list(damage.packages)}){where} restores {'it' if damage.files == 1 else 'them'}{host}."
        )
    for check in report.checks:
        counts = check.counts()
        critical = counts["critical"]
        if check.name in damage.checks:
            critical -= sum(
                1 for f in check.findings if f.severity is Severity.CRITICAL and f.details.get("package")
            )
        if critical > 0:
            sentences.append(f"{capital(check_phrase(check))}: {plural(critical, 'damaged item')} found.")
    for check in report.checks:
        counts = check.counts()
        if counts["warning"] and counts["critical"]:
            sentences.append(
                f"{capital(check_phrase(check))}: besides the damage, "
                f"{plural(counts['warning'], 'more thing', 'more things')} to look at."
            )
        elif counts["warning"]:
            things = plural(counts["warning"], "thing")
            sentences.append(f"{capital(check_phrase(check))}: {things} to look at.")
    unfinished = [check_phrase(c) for c in report.checks if c.status is Status.UNKNOWN]
    if unfinished:
        sentences.append(
            f"Not checked completely: {_and_list(unfinished)}. No damage reported there does not mean "
            "there is none (see what was not checked below)."
        )
    ran = [c for c in report.checks if c.status is not Status.SKIPPED]
    if not ran:
        sentences.append("Nothing was checked: every check was skipped (see below why).")
    elif report.status is Status.OK:
        sentences.append(f"No damage was found by the {plural(len(ran), 'check')} that ran.")
    if report.interrupted:
        sentences.append("The audit was stopped before the end: it covers only what was checked until then.")
    return sentences


def _and_list(items: List[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short_list(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit:,} more" if len(names) > limit else "")
