"""Checking again after a repair: the checker that found the damage runs again, through the runner,
on the repaired root, and its repairer says which of its findings are damage it was to repair."""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

from fsaudit.checker import Context, OptionError
from fsaudit.model import Finding, Status
from fsaudit.registry import Entry, load_checkers
from fsaudit.repair import Plan, Step
from fsaudit.runner import run_check
from fsaudit.target import Target

LOG = logging.getLogger(__name__)


def recheck(
    plan: Plan, done: Sequence[Step], entries: Dict[str, Entry] | None = None
) -> Tuple[List[Finding], str, str]:
    """(findings still wrong on what was restored, the method in words, why checking fell short or '')."""
    entries = load_checkers() if entries is None else entries
    still: List[Finding] = []
    methods: List[str] = []
    problems: List[str] = []
    restored = {id(step) for step in done}
    for section in plan.sections:
        steps = [step for step in section.steps if id(step) in restored]
        if not steps:
            continue
        methods.append(f"the {section.check} check")
        found, problem = _check_again(section.check, section.repairer, plan.root, steps, entries)
        still.extend(found)
        if problem:
            problems.append(problem)
    return still, ", ".join(methods), "; ".join(problems)


def _check_again(check: str, repairer, root: str, steps: List[Step], entries) -> Tuple[List[Finding], str]:
    checker_class = entries[check].checker
    try:
        checker = checker_class(repairer.recheck_options(steps), Context())
    except OptionError as error:
        return [], f"the {check} check cannot be limited to what was restored: {error}"
    try:
        result = run_check(checker, Target(root, drop_cache=True))
    except Exception:  # the runner's way of saying the operator interrupted it (Ctrl-C)
        LOG.debug("checking %s again stopped", check, exc_info=True)
        return [], f"checking the {check} check again was interrupted"
    LOG.debug("checked %s again: %s %s", check, result.status.value, result.reason)
    if result.status is Status.SKIPPED:
        return [], f"the {check} check was skipped: {result.reason}"
    found = [f for f in result.findings if repairer.still_damaged(f, steps)]
    problem = f"the {check} check did not finish: {result.reason}" if result.status is Status.UNKNOWN else ""
    return found, problem
