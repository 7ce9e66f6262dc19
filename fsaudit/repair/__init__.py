"""Repair: restore what a report found damaged, through the repairer each checker declares.

The core knows no package manager. A checker names its repairer (`repairer = "module:Class"`, loaded
only when repair runs); the repairer turns that check's findings into steps (what each restores, and
from where) and applies them; the core prints the plan, asks, applies, and has the checker verify
again through the runner.

A report is data about a system, and it may come from a hostile VM: it only says which paths were
found damaged. A repairer re-derives everything else from the system it acts on (its package
database says which package and version, the files as they are now say whether anything is still
to do), and nothing in a report becomes an option, a command or a path outside that system.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple

from fsaudit.errors import FsauditError
from fsaudit.model import Finding, Report, Severity
from fsaudit.registry import Entry, load_checkers
from fsaudit.target import Target
from fsaudit.window import Window

LOG = logging.getLogger(__name__)

# A path from a report longer than this is no path of a real system (PATH_MAX).
MAX_PATH = 4096


@dataclass
class Request:
    """What the operator asked for, worked out once by the CLI."""

    root: str
    allow_conffiles: bool = False
    include_modified: bool = False
    archives: Tuple[str, ...] = ()
    # The report's suspect window: a file changed inside it is at risk, not a local change.
    window: Window | None = None

    @property
    def live(self) -> bool:
        """Whether repair acts on the running system (its package manager), not on a mounted image."""
        return os.path.realpath(self.root) == "/"


@dataclass
class Step:
    """One unit a repairer restores (a package), the findings it answers and the paths it restores."""

    check: str
    label: str
    findings: List[Finding] = field(default_factory=list)
    paths: List[str] = field(default_factory=list)
    # Where the packaged content comes from, in words for the plan.
    source: str = ""
    # The repairer's own data about the step.
    data: Any = None


@dataclass
class Section:
    """What one repairer will do about one check's findings, and what it will not."""

    check: str
    repairer: Repairer | None = None
    steps: List[Step] = field(default_factory=list)
    # What will run or happen, in order, as the plan shows it (`$ apt-get ...`).
    actions: List[str] = field(default_factory=list)
    # Findings it could handle but leaves alone unless asked, with why and the option that asks.
    left_alone: List[Tuple[Finding, str]] = field(default_factory=list)
    # Findings it cannot repair here, with why: the owner's list.
    cannot: List[Tuple[Finding, str]] = field(default_factory=list)
    # Findings whose path is as packaged again (repaired since the audit, or never damaged).
    intact: List[Finding] = field(default_factory=list)


@dataclass
class Plan:
    """What `fsaudit repair` will do on `root`, and what it will not."""

    request: Request
    sections: List[Section] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.request.root

    @property
    def steps(self) -> List[Step]:
        return [step for section in self.sections for step in section.steps]

    def gathered(self, name: str) -> list:
        return [item for section in self.sections for item in getattr(section, name)]


@dataclass
class Outcome:
    """What applying a plan did."""

    done: List[Step] = field(default_factory=list)
    failed: List[Tuple[Step, str]] = field(default_factory=list)
    left: List[Step] = field(default_factory=list)
    interrupted: bool = False
    # Findings on what was repaired that checking again still reports.
    still_wrong: List[Finding] = field(default_factory=list)
    verify_problem: str = ""


class Stop:
    """Whether the operator asked to stop (Ctrl-C, SIGTERM); repairers look between steps."""

    requested: bool = False


class Repairer:
    """Restores what one checker found damaged, on the system `request.root`.

    Subclasses implement `plan` and `apply`. On the running system a repairer uses the package
    manager's own reinstall, in one transaction; on a mounted image it runs nothing from the image:
    it writes each file's packaged bytes, taken from the manager's cached package file and verified
    against the package database's digest, inside the root (`fsaudit.repair.image`).
    """

    def __init__(self, check: str, request: Request):
        self.check = check
        self.request = request
        # The system repaired, read only through its Target (paths resolved inside the root).
        self.target = Target(request.root)

    def plan(self, findings: Sequence[Finding]) -> Section:
        """The steps that restore `findings` (INFO findings are never passed), and what is left."""
        raise NotImplementedError

    def apply(self, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
        """Carry out the section's steps; every step ends up done, failed, or left (when `stop`)."""
        raise NotImplementedError

    def recheck_options(self, steps: Sequence[Step]) -> Dict[str, list]:
        """Checker options that limit checking again to what `steps` restored (default: none)."""
        return {}

    def still_damaged(self, finding: Finding, steps: Sequence[Step]) -> bool:
        """Whether a finding of checking again is damage that `steps` were to repair."""
        paths = {path for step in steps for path in step.paths}
        return finding.severity is not Severity.INFO and finding.path in paths


# -- what a report may say -----------------------------------------------------------------------


def finding_path(finding: Finding) -> bytes | None:
    """The finding's path as bytes (the exact bytes from `details.path_b64` for names that are not
    UTF-8), or None when it is no absolute, normal path: a report can name nothing outside a root."""
    raw = finding.details.get("path_b64") if isinstance(finding.details, dict) else None
    if isinstance(raw, str):
        try:
            path = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return None
    elif isinstance(finding.path, str):
        path = finding.path.encode("utf-8", "surrogateescape")
    else:
        return None
    if not path.startswith(b"/") or b"\0" in path or len(path) > MAX_PATH:
        return None
    parts = path.split(b"/")[1:]
    if path != b"/" and any(part in (b"", b".", b"..") for part in parts):
        return None
    return path


# -- loading repairers ---------------------------------------------------------------------------


def load_repairer(entry: Entry | None) -> Tuple[type | None, str]:
    """(repairer class, '') for a checker that declares one, else (None, why not)."""
    if entry is None:
        return None, "no checker of that name is installed here"
    checker = entry.checker
    if checker is None:
        return None, entry.error
    spec = getattr(checker, "repairer", "") or ""
    if not spec:
        return None, f"the {entry.name} check has no repairer"
    module, _, name = spec.partition(":")
    try:
        loaded = getattr(importlib.import_module(module), name)
    except Exception as error:  # a broken plug-in must not stop the others
        LOG.debug("cannot load repairer %s", spec, exc_info=True)
        return None, f"cannot load its repairer {spec}: {type(error).__name__}: {error}"
    if not (isinstance(loaded, type) and issubclass(loaded, Repairer)):
        return None, f"{spec} is not a Repairer"
    return loaded, ""


def build_plan(report: Report, request: Request, entries: Dict[str, Entry] | None = None) -> Plan:
    """The plan for the damage `report` found, on the system `request.root`."""
    if not os.path.isdir(request.root):
        raise FsauditError(f"{request.root} is not a directory: mount the system and give --root")
    entries = load_checkers() if entries is None else entries
    plan = Plan(request)
    for check in report.checks:
        findings = [f for f in check.findings if f.severity is not Severity.INFO]
        if not findings:
            continue
        if check.name not in entries:
            # A name from the report that is no checker here: never used to look anything up.
            plan.sections.append(_nobody(check.name, findings, "no checker of that name is installed here"))
            continue
        repairer_class, why = load_repairer(entries[check.name])
        if repairer_class is None:
            plan.sections.append(_nobody(check.name, findings, why))
            continue
        repairer = repairer_class(check.name, request)
        section = repairer.plan(findings)
        section.repairer = repairer
        plan.sections.append(section)
    return plan


def _nobody(check: str, findings: List[Finding], why: str) -> Section:
    LOG.debug("findings of %s go to the owner's list: %s", check, why)
    return Section(check, cannot=[(f, f.advice or "restore it from a backup") for f in findings])


def apply_plan(plan: Plan, say: Callable[[str], None], stop: Stop) -> Outcome:
    """Apply every section with steps, in order; after a stop request, the rest is left."""
    outcome = Outcome()
    for section in plan.sections:
        if not section.steps:
            continue
        if stop.requested:
            outcome.left.extend(section.steps)
            continue
        done = section.repairer.apply(section, say, stop)
        outcome.done.extend(done.done)
        outcome.failed.extend(done.failed)
        outcome.left.extend(done.left)
    outcome.interrupted = stop.requested
    return outcome


def outcome_exit_code(outcome: Outcome) -> int:
    """0 repaired and verified, 2 damage remains on what was repaired, 3 not everything was done."""
    if outcome.still_wrong:
        return 2
    if outcome.interrupted or outcome.failed or outcome.left or outcome.verify_problem:
        return 3
    return 0
