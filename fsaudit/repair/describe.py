"""The repair plan and its outcome as lines of text for the operator's terminal.

Every name in them came from a report or from the repaired system, so each is made inert first.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from fsaudit.escape import inert
from fsaudit.model import Finding
from fsaudit.repair import Outcome, Plan

LIMIT = 20


def _finding_line(finding: Finding) -> str:
    where = finding.path or finding.subject or finding.check
    return inert(f"{where}: {finding.message} [{finding.check} {finding.code}]")


def _listed(items: Sequence, line, indent: str = "  ") -> List[str]:
    lines = [f"{indent}- {line(item)}" for item in items[:LIMIT]]
    if len(items) > LIMIT:
        lines.append(f"{indent}  ... and {len(items) - LIMIT:,} more (see the report)")
    return lines


def _with_reason(item: Tuple[Finding, str]) -> str:
    finding, why = item
    return f"{_finding_line(finding)}: {inert(why)}"


def describe_plan(plan: Plan) -> List[str]:
    """What will run, what is left alone and why, what is already fine, what cannot be repaired."""
    where = "this running system (/)" if plan.request.live else f"the image at {plan.root}"
    lines = [f"Repair plan for {inert(where)}:"]
    for section in plan.sections:
        if not section.steps:
            continue
        findings = sum(len(step.findings) for step in section.steps)
        count = len(section.steps)
        lines.append(
            f"  {inert(section.check)}: restore {count} package(s), answering {findings} finding(s):"
        )
        for step in section.steps:
            source = f" from {inert(step.source)}" if step.source else ""
            lines.append(f"  - {inert(step.label)}{source}: {len(step.paths)} file(s)")
            lines.extend(f"      {inert(path)}" for path in step.paths[:LIMIT])
            if len(step.paths) > LIMIT:
                lines.append(f"      ... and {len(step.paths) - LIMIT:,} more")
        lines.extend(f"    {inert(action)}" for action in section.actions)
    if not plan.steps:
        lines.append("  nothing to restore")
    left_alone = plan.gathered("left_alone")
    if left_alone:
        lines.append(f"Left alone ({len(left_alone)}): changes that may be intended:")
        lines.extend(_listed(left_alone, _with_reason))
    intact = plan.gathered("intact")
    if intact:
        lines.append(f"Already as packaged ({len(intact)}): nothing to do:")
        lines.extend(_listed(intact, _finding_line))
    cannot = plan.gathered("cannot")
    if cannot:
        lines.append(f"Cannot repair automatically ({len(cannot)}): for the owner of the system:")
        lines.extend(_listed(cannot, _with_reason))
    return lines


def describe_outcome(outcome: Outcome, method: str) -> List[str]:
    """What the repair did, what checking again found, and what is left."""
    lines = []
    if outcome.done:
        lines.append(f"Restored: {', '.join(inert(step.label) for step in outcome.done)}")
    for step, problem in outcome.failed:
        lines.append(f"FAILED: {inert(step.label)}: {inert(problem)}")
    if outcome.interrupted:
        lines.append("Interrupted: what was under way was finished, the rest was not started.")
    if outcome.left:
        lines.append(f"Not done (left): {', '.join(inert(step.label) for step in outcome.left)}")
    if outcome.done:
        if outcome.still_wrong:
            lines.append(f"Checked again with {method}: {len(outcome.still_wrong)} problem(s) remain:")
            lines.extend(_listed(outcome.still_wrong, _finding_line))
        elif outcome.verify_problem:
            lines.append(f"Checked again with {method}, but not to the end: {inert(outcome.verify_problem)}")
        elif outcome.failed or outcome.left:
            lines.append(f"Checked again with {method}: what was restored is intact; the rest is not done.")
        else:
            lines.append(f"Checked again with {method}: everything restored is intact.")
    elif outcome.verify_problem:
        lines.append(f"Could not check again: {inert(outcome.verify_problem)}")
    return lines
