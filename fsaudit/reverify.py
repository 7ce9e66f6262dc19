"""Re-verification after a repair: is what was reinstalled now as the package says?

The checker that found the damage verifies again, through the runner, on the same root. When it
cannot be loaded, the package manager's own verification (`dpkg --verify`, `rpm -V`) stands in.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from typing import Dict, List, Sequence, Tuple

from fsaudit.checker import Context
from fsaudit.model import Finding, Severity, Status
from fsaudit.registry import load_checkers
from fsaudit.repair import REINSTALL_CODES, Step, is_conffile, rpm_root_options
from fsaudit.runner import run_check
from fsaudit.target import Target

LOG = logging.getLogger(__name__)

# Options through which a package checker can be limited to some packages, if it has one.
_PACKAGE_OPTIONS = ("packages", "package")
_VERIFY_LINE = re.compile(r"^(\S+)\s+(?:(c)\s+)?(/.*)$")


def reverify(root: str, steps: Sequence[Step]) -> Tuple[List[Finding], str, str]:
    """Findings still on the steps' packages, the method used, and why verification fell short ('')."""
    still: List[Finding] = []
    methods: List[str] = []
    problems: List[str] = []
    by_check: Dict[str, List[Step]] = {}
    for step in steps:
        by_check.setdefault(step.check, []).append(step)
    for check, group in by_check.items():
        found, problem = verify_with_checker(check, root, group)
        if found is None:
            LOG.debug("checker %s cannot re-verify: %s", check, problem)
            found, problem = verify_with_package_manager(root, group)
            methods.append(f"{group[0].manager} verification")
        else:
            methods.append(f"the {check} check")
        still.extend(found)
        if problem:
            problems.append(problem)
    return still, ", ".join(methods), "; ".join(problems)


def _wanted(finding: Finding, steps: Dict[str, Step]) -> bool:
    """Damage of the kind the reinstall of that package was to repair (not, say, its database entry)."""
    step = steps.get(str(finding.details.get("package")))
    if step is None or finding.severity is Severity.INFO:
        return False
    return finding.code in REINSTALL_CODES or (step.conffiles and is_conffile(finding))


def verify_with_checker(check: str, root: str, steps: List[Step]) -> Tuple[List[Finding] | None, str]:
    """Run `check` again on `root`; None when that checker is not available here."""
    entry = load_checkers().get(check)
    if entry is None or entry.checker is None:
        return None, entry.error if entry else f"no checker {check!r}"
    packages = sorted({step.package for step in steps})
    raw = {name: packages for name in _PACKAGE_OPTIONS if any(o.name == name for o in entry.checker.options)}
    checker = entry.checker(raw, Context())
    result = run_check(checker, Target(root, drop_cache=True))
    if result.status is Status.SKIPPED:
        return None, f"the {check} check was skipped: {result.reason}"
    by_package = {step.package: step for step in steps}
    found = [f for f in result.findings if _wanted(f, by_package)]
    problem = f"the {check} check did not finish: {result.reason}" if result.status is Status.UNKNOWN else ""
    return found, problem


def _verify_command(step: Step, root: str) -> List[str]:
    live = os.path.realpath(root) == "/"
    if step.manager == "dpkg":
        return ["dpkg", *([] if live else ["--root", root]), "--verify", step.package]
    return ["rpm", *rpm_root_options(root), "-V", step.package]


def parse_verify_output(text: str, step: Step) -> List[Finding]:
    """Findings from `dpkg --verify` / `rpm -V` lines (`??5??????   c /etc/x`, `missing     /usr/bin/y`)."""
    findings = []
    for line in text.splitlines():
        match = _VERIFY_LINE.match(line)
        if not match:
            continue
        flags, conffile, path = match.group(1), bool(match.group(2)), match.group(3)
        if flags == "missing":
            code = "conffile-missing" if conffile else "missing"
            message = "the file is missing"
        elif len(flags) >= 3 and flags[2] == "5":
            code = "conffile-changed" if conffile else "content-differs"
            message = "content differs from the packaged file"
        else:
            continue
        findings.append(
            Finding(
                check=step.check,
                code=code,
                severity=Severity.WARNING if conffile else Severity.CRITICAL,
                message=message,
                path=path,
                subject=f"{step.package} {step.version}",
                details={"package": step.package, "version": step.version, "architecture": step.architecture},
            )
        )
    return findings


def verify_with_package_manager(root: str, steps: List[Step]) -> Tuple[List[Finding], str]:
    """Ask dpkg or rpm to verify the steps' packages on `root`."""
    found: List[Finding] = []
    problems = []
    for step in steps:
        command = _verify_command(step, root)
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append(f"cannot run {' '.join(command)}: {error}")
            continue
        findings = parse_verify_output(completed.stdout, step)
        if completed.returncode not in (0, 1) or (completed.returncode == 1 and not completed.stdout.strip()):
            problems.append(f"{command[0]} could not verify {step.package}: {completed.stderr.strip()[:200]}")
        found.extend(f for f in findings if step.conffiles or not is_conffile(f))
    return found, "; ".join(problems)
