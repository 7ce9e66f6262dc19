"""Generic facts about a report that several renderers put into words; no checker is special here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from fsaudit.model import CheckResult, Finding, Report, Severity, Status


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
    damage.packages = list(packages)
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


def group_count(check: CheckResult, severity: Severity, code: str, listed: int) -> int:
    """How many findings of (severity, code) the check made: `listed`, unless the list was cut when
    the report was loaded (then the full count loaded with it)."""
    return max(listed, check.group_counts.get((severity.value, code), 0))


def unverified_items(check: CheckResult) -> List[str]:
    """What a check counted as not read or not verified (`*unreadable*`, `*not_verified*`, `*unverified*`
    counters), as `1,204 files not verified`."""
    items = []
    for key, value in check.stats.items():
        counted = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if counted and ("unreadable" in key or "not_verified" in key or "unverified" in key):
            items.append(f"{value:,} {key.replace('_', ' ')}")
    return items


def not_checked(report: Report) -> List[Tuple[str, str]]:
    """Checks that did not run or did not finish, and what the others could not read or verify,
    with the reason: silence is not health."""
    rows = []
    for check in report.checks:
        if check.status is Status.SKIPPED:
            rows.append((check.name, f"not checked: {check.reason or 'skipped'}"))
            continue
        if check.status is Status.UNKNOWN or (check.reason and check.status is not Status.OK):
            rows.append((check.name, f"not checked to the end: {check.reason or 'unknown'}"))
        elif check.reason:
            rows.append((check.name, check.reason))
        unverified = unverified_items(check)
        if unverified:
            rows.append((check.name, f"could not read or verify: {', '.join(unverified)}"))
    return rows


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
        sentences.append(
            f"{plural(damage.files, 'system file')} {'was' if damage.files == 1 else 'were'} damaged; "
            f"reinstalling {plural(len(damage.packages), 'package')} "
            f"({_short_list(damage.packages)}) restores {'it' if damage.files == 1 else 'them'}."
        )
    for check in report.checks:
        counts = check.counts()
        critical = counts["critical"]
        if check.name in damage.checks:
            critical -= sum(
                1 for f in check.findings if f.severity is Severity.CRITICAL and f.details.get("package")
            )
        if critical > 0:
            sentences.append(f"{_capital(check_phrase(check))}: {plural(critical, 'damaged item')} found.")
    for check in report.checks:
        warnings = check.counts()["warning"]
        if warnings:
            sentences.append(f"{_capital(check_phrase(check))}: {plural(warnings, 'thing')} to look at.")
    unfinished = [c.name for c in report.checks if c.status is Status.UNKNOWN]
    if unfinished:
        sentences.append(
            f"{plural(len(unfinished), 'check')} could not check everything ({', '.join(unfinished)}): "
            "no damage reported there does not mean there is none."
        )
    ran = [c for c in report.checks if c.status is not Status.SKIPPED]
    if not ran:
        sentences.append("Nothing was checked: every check was skipped (see below why).")
    elif report.status is Status.OK:
        sentences.append(f"No damage was found by the {plural(len(ran), 'check')} that ran.")
    skipped = [c.name for c in report.checks if c.status is Status.SKIPPED]
    if skipped and ran:
        sentences.append(f"Not checked: {', '.join(skipped)} (see below why).")
    return sentences


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short_list(names: List[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit:,} more" if len(names) > limit else "")
