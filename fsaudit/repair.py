"""Repair of what the package manager can restore: plan from a report, apply, re-verify.

The plan is built from findings that name a package (`details.package`, `details.version`,
`details.architecture`, as the package checkers write them). Each step reinstalls exactly one
package at exactly the installed version; nothing that is not in the plan is run.
"""

from __future__ import annotations

import glob
import logging
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Tuple

from fsaudit.errors import FsauditError
from fsaudit.model import Finding, Report, Severity

LOG = logging.getLogger(__name__)

# Which package manager restores the findings of which check.
MANAGERS = {"debian": "dpkg", "rpm": "rpm"}

APT_CACHE = "var/cache/apt/archives"
RPM_CACHES = ("var/cache/dnf/*/packages", "var/cache/yum/*/*/*/packages", "var/cache/yum/*/packages")

# Keep local conffiles and never prompt; with --allow-conffiles, replace edited ones and restore missing ones.
_DPKG_KEEP_CONFFILES = ("--force-confdef", "--force-confold")
_DPKG_RESTORE_CONFFILES = ("--force-confask", "--force-confnew", "--force-confmiss")


# Codes of the package checkers (debian, rpm) whose file a reinstall puts back as packaged. Any other
# code that names a package (a damaged package database, a package dpkg did not finish installing,
# a code this version does not know) goes to the owner's list: it is never acted on.
REINSTALL_CODES = frozenset(
    {
        "missing",
        "content-differs",
        "wrong-type",
        "type-differs",
        "link-differs",
        "metadata-differs",
        "unreadable",
        "directory-missing",
        "symlink-missing",
    }
)


# Where RPM systems keep their database, newest layout first (inside the audited root).
RPM_DBPATHS = ("usr/lib/sysimage/rpm", "var/lib/rpm")


def rpm_root_options(root: str) -> List[str]:
    """`--root R --dbpath P` for the image's own RPM database (none for the running system).

    The database path is given because the host's rpm may default to another one (Debian's rpm
    uses ~/.rpmdb)."""
    if os.path.realpath(root) == "/":
        return []
    for dbpath in RPM_DBPATHS:
        if os.path.isdir(os.path.join(root, dbpath)):
            return ["--root", root, "--dbpath", "/" + dbpath]
    return ["--root", root]


def is_conffile(finding: Finding) -> bool:
    """Findings about configuration files the admin may have edited on purpose."""
    return finding.code.startswith(("conffile-", "config-"))


@dataclass
class Step:
    """Reinstall one package at its installed version, and the findings that it repairs."""

    check: str
    manager: str
    package: str
    version: str
    architecture: str
    findings: List[Finding] = field(default_factory=list)
    conffiles: bool = False
    archive: str | None = None
    command: List[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        arch = f" ({self.architecture})" if self.architecture else ""
        return f"{self.package} {self.version}{arch}"

    @property
    def paths(self) -> List[str]:
        return sorted({f.path for f in self.findings if f.path})


@dataclass
class Plan:
    """What `fsaudit repair` will do, and what it will not."""

    root: str
    steps: List[Step] = field(default_factory=list)
    # Findings a repair could handle but leaves alone unless asked (edited conffiles).
    left_alone: List[Finding] = field(default_factory=list)
    # Findings no package manager restores here, with why: the customer's list.
    cannot: List[Tuple[Finding, str]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return os.path.realpath(self.root) == "/"


def _package_key(finding: Finding) -> Tuple[str, str, str] | None:
    details = finding.details if isinstance(finding.details, dict) else {}
    package, version = details.get("package"), details.get("version")
    if not isinstance(package, str) or not package or not isinstance(version, str) or not version:
        return None
    architecture = details.get("architecture")
    return package, version, architecture if isinstance(architecture, str) else ""


def build_plan(
    report: Report,
    root: str,
    allow_conffiles: bool = False,
    archives: Iterable[str] = (),
) -> Plan:
    """The repair plan for the damage in `report` on the system at `root`."""
    if not os.path.isdir(root):
        raise FsauditError(f"{root} is not a directory: mount the system and give --root")
    plan = Plan(root=root)
    steps: Dict[Tuple[str, str, str, str], Step] = {}
    for finding in report.findings():
        if finding.severity is Severity.INFO:
            continue
        manager = MANAGERS.get(finding.check)
        key = _package_key(finding)
        if manager is None or key is None or not (finding.code in REINSTALL_CODES or is_conffile(finding)):
            plan.cannot.append((finding, finding.advice or "restore it from a backup"))
            continue
        if is_conffile(finding) and not allow_conffiles:
            plan.left_alone.append(finding)
            continue
        step = steps.get((finding.check, *key))
        if step is None:
            step = Step(finding.check, manager, *key)
            steps[(finding.check, *key)] = step
        step.findings.append(finding)
        step.conffiles = step.conffiles or is_conffile(finding)
    for step in steps.values():
        problem = _prepare(step, plan, list(archives))
        if problem:
            plan.cannot.extend((finding, problem) for finding in step.findings)
        else:
            plan.steps.append(step)
    plan.steps.sort(key=lambda s: (s.manager, s.package))
    return plan


def installed_version(root: str, step: Step) -> str | None:
    """The version of the step's package installed at `root` ('' when not installed, None if unknown)."""
    live = os.path.realpath(root) == "/"
    if step.manager == "dpkg":
        spec = step.package if step.architecture in ("", "all") else f"{step.package}:{step.architecture}"
        admindir = [] if live else [f"--admindir={os.path.join(root, 'var/lib/dpkg')}"]
        command = [
            "dpkg-query",
            *admindir,
            "--show",
            "--showformat=${db:Status-Status}\\t${Version}\\n",
            spec,
        ]
    else:
        spec = f"{step.package}.{step.architecture}" if step.architecture else step.package
        command = ["rpm", *rpm_root_options(root), "-q", "--qf", "installed\\t%{EVR}\\n", spec]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = [
        line.split("\t", 1)[1] for line in completed.stdout.splitlines() if line.startswith("installed\t")
    ]
    if completed.returncode not in (0, 1):
        return None
    return versions[0] if len(versions) == 1 else ""


def _prepare(step: Step, plan: Plan, archives: List[str]) -> str:
    """Fill in the step's command; return why it cannot be done, or ''."""
    installed = installed_version(plan.root, step)
    if installed is None:
        return f"cannot tell which version of {step.package} is installed ({step.manager} did not answer)"
    if not installed:
        return f"{step.package} is not (fully) installed at {plan.root}: audit again"
    if not _same_version(step.manager, step.version, installed):
        return f"{step.package} {installed} is installed, the report was about {step.version}: audit again"
    if plan.live:
        step.command = live_command(step)
        return ""
    step.archive = find_archive(plan.root, step, archives)
    if step.archive is None:
        cache = APT_CACHE if step.manager == "dpkg" else "the dnf/yum cache"
        where = " or ".join([f"{cache} under {plan.root}", *archives])
        return (
            f"no package file of {step.label} in {where}: download that exact version into a directory "
            "and give it with --archives, or reinstall it from inside the running system"
        )
    step.command = root_command(step, plan.root)
    return ""


def live_command(step: Step) -> List[str]:
    """The command that reinstalls the step's package on the running system, from its repositories."""
    if step.manager == "dpkg":
        spec = f"{step.package}:{step.architecture}" if step.architecture else step.package
        options = _DPKG_RESTORE_CONFFILES if step.conffiles else _DPKG_KEEP_CONFFILES
        dpkg_options = [f"-o=Dpkg::Options::={option}" for option in options]
        return [
            "apt-get",
            "install",
            "--reinstall",
            "--no-remove",
            "-y",
            *dpkg_options,
            f"{spec}={step.version}",
        ]
    arch = f".{step.architecture}" if step.architecture else ""
    return ["dnf", "reinstall", "-y", f"{step.package}-{step.version}{arch}"]


def root_command(step: Step, root: str) -> List[str]:
    """The command that reinstalls the step's package into the mounted system at `root`."""
    if step.manager == "dpkg":
        options = _DPKG_RESTORE_CONFFILES if step.conffiles else _DPKG_KEEP_CONFFILES
        return ["dpkg", "--root", root, *options, "-i", step.archive]
    return ["rpm", *rpm_root_options(root), "-U", "--replacepkgs", step.archive]


def _archive_fields(path: str, manager: str) -> Tuple[str, str, str] | None:
    """(package, version, architecture) read from a package file, or None when it is unreadable."""
    if manager == "dpkg":
        command = ["dpkg-deb", "--show", "--showformat=${Package}\\t${Version}\\t${Architecture}", path]
    else:
        command = ["rpm", "-qp", "--nosignature", "--qf", "%{NAME}\\t%{EVR}\\t%{ARCH}", path]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = completed.stdout.strip().split("\t")
    if completed.returncode != 0 or len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def _same_version(manager: str, wanted: str, found: str) -> bool:
    if wanted == found:
        return True
    # rpm prints an epoch of 0 or none the same way; dpkg versions are compared as written.
    return (
        manager == "rpm"
        and wanted.split(":", 1)[-1] == found.split(":", 1)[-1]
        and (":" not in wanted or ":" not in found or wanted.startswith("0:") or found.startswith("0:"))
    )


def find_archive(root: str, step: Step, archives: List[str]) -> str | None:
    """The package file of exactly the step's package, version and architecture, if one is cached.

    The cache is on the damaged disk too: a file is taken only when its own control data reads back
    with the right name, version and architecture (re-verification catches damaged content), and a
    symlink is never followed (in an image it could point anywhere on the host).
    """
    manager = step.manager
    patterns = [APT_CACHE] if manager == "dpkg" else list(RPM_CACHES)
    suffix = "*.deb" if manager == "dpkg" else "*.rpm"
    places = [os.path.join(glob.escape(root), p, suffix) for p in patterns]
    places += [os.path.join(glob.escape(place), suffix) for place in archives]
    for place in places:
        for path in sorted(glob.glob(place)):
            if not os.path.basename(path).startswith(step.package + ("_" if manager == "dpkg" else "-")):
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            fields = _archive_fields(path, manager)
            if fields is None:
                continue
            package, version, architecture = fields
            if package != step.package or not _same_version(manager, step.version, version):
                continue
            if step.architecture and architecture not in (step.architecture, "all", "noarch"):
                continue
            return os.path.abspath(path)
    return None


@dataclass
class Outcome:
    """What applying a plan did."""

    done: List[Step] = field(default_factory=list)
    failed: List[Tuple[Step, str]] = field(default_factory=list)
    left: List[Step] = field(default_factory=list)
    interrupted: bool = False
    # Findings on the repaired packages that re-verification still reports.
    still_wrong: List[Finding] = field(default_factory=list)
    verify_problem: str = ""


class _Stop:
    """Turns SIGINT/SIGTERM into a request to stop after the running step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def apt_side_effects(simulation: str, step: Step) -> List[str]:
    """What an `apt-get -s` run would do besides reinstalling the step's package (`Inst x`, `Remv y`)."""
    others = []
    for line in simulation.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] not in ("Inst", "Remv", "Purg"):
            continue
        name = parts[1].split(":", 1)[0]
        if name != step.package:
            others.append(f"{parts[0]} {parts[1]}")
    return others


def _apt_check(step: Step) -> Tuple[int, str]:
    """Refuse an apt step that would install, upgrade or remove anything else (exit 0 when clean)."""
    simulate = [step.command[0], "-s", *step.command[1:]]
    try:
        completed = subprocess.run(simulate, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 127, f"cannot simulate {shlex.join(simulate)}: {error}"
    if completed.returncode != 0:
        return completed.returncode, " ".join(completed.stderr.strip().splitlines()[-3:])
    others = apt_side_effects(completed.stdout, step)
    if others:
        return 1, f"not run: apt would also change other packages ({', '.join(others[:10])})"
    return 0, ""


def run_step(step: Step) -> Tuple[int, str]:
    """Run one step to its end: its exit status (negative: the signal that ended it) and output tail.

    The package manager runs in its own session so that a Ctrl-C in the terminal reaches only
    fsaudit, which then lets this package finish: a package is never left half-reinstalled.
    """
    if step.command[0] == "apt-get":
        status, problem = _apt_check(step)
        if status != 0:
            return status, problem
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        process = subprocess.Popen(
            step.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
    except OSError as error:
        return 127, f"cannot run {step.command[0]}: {error.strerror}"
    output, _ = process.communicate()
    LOG.debug("%s: %s", shlex.join(step.command), output)
    return process.returncode, " ".join(output.strip().splitlines()[-3:])


def apply_plan(plan: Plan, echo: Callable[[str], None]) -> Outcome:
    """Run the plan's steps one package at a time, stopping cleanly when asked to."""
    outcome = Outcome()
    with _Stop() as stop:
        for number, step in enumerate(plan.steps, 1):
            if stop.requested:
                outcome.interrupted = True
                outcome.left.append(step)
                continue
            echo(f"reinstalling {step.label} ({number}/{len(plan.steps)}): {shlex.join(step.command)}")
            status, tail = run_step(step)
            if status == 0:
                outcome.done.append(step)
            elif status < 0 and stop.requested:
                # The interrupt reached the child while it was being started, before the package
                # manager ran: nothing of this package was touched.
                outcome.left.append(step)
            elif status < 0:
                problem = f"{step.command[0]} was stopped by signal {-status}; check the package state"
                outcome.failed.append((step, problem))
            else:
                outcome.failed.append((step, f"{step.command[0]} exited with {status}: {tail}"))
        outcome.interrupted = outcome.interrupted or stop.requested
    return outcome


def _finding_line(finding: Finding) -> str:
    where = finding.path or finding.subject or finding.check
    return f"{where}: {finding.message} [{finding.check} {finding.code}]"


def describe_plan(plan: Plan, limit: int = 20) -> List[str]:
    """The plan as lines of text: what will run, what is left alone, what cannot be repaired."""
    lines = [f"Repair plan for {plan.root}:"]
    if plan.steps:
        files = sum(len(step.findings) for step in plan.steps)
        count = len(plan.steps)
        lines.append(
            f"  reinstall {count} package(s) at the installed version, restoring {files} finding(s):"
        )
        for step in plan.steps:
            source = f" from {step.archive}" if step.archive else ""
            lines.append(f"  - {step.label}{source}: {len(step.findings)} file(s)")
            lines.extend(f"      {path}" for path in step.paths[:limit])
            if len(step.paths) > limit:
                lines.append(f"      ... and {len(step.paths) - limit} more")
            lines.append(f"      $ {shlex.join(step.command)}")
    else:
        lines.append("  nothing to reinstall")
    if plan.left_alone:
        lines.append(
            f"Left alone ({len(plan.left_alone)}): edited or missing configuration files; "
            "--allow-conffiles replaces them with the packaged version (dpkg keeps the old one as .dpkg-old):"
        )
        lines.extend(f"  - {_finding_line(f)}" for f in plan.left_alone[:limit])
        if len(plan.left_alone) > limit:
            lines.append(f"  ... and {len(plan.left_alone) - limit} more")
    if plan.cannot:
        lines.append(f"Cannot repair automatically ({len(plan.cannot)}): for the owner of the system:")
        for finding, why in plan.cannot[:limit]:
            lines.append(f"  - {_finding_line(finding)}: {why}")
        if len(plan.cannot) > limit:
            lines.append(f"  ... and {len(plan.cannot) - limit} more (see the report)")
    return lines


def describe_outcome(outcome: Outcome, method: str, limit: int = 20) -> List[str]:
    """What the repair did, what re-verification found, and what is left."""
    lines = []
    if outcome.done:
        lines.append(f"Reinstalled: {', '.join(step.label for step in outcome.done)}")
    for step, problem in outcome.failed:
        lines.append(f"FAILED: {step.label}: {problem}")
    if outcome.interrupted:
        lines.append("Interrupted: the package being reinstalled was finished, the rest was not started.")
    if outcome.left:
        lines.append(f"Not done (left): {', '.join(step.label for step in outcome.left)}")
    if outcome.done:
        if outcome.still_wrong:
            lines.append(f"Re-verified with {method}: {len(outcome.still_wrong)} problem(s) remain:")
            lines.extend(f"  - {_finding_line(f)}" for f in outcome.still_wrong[:limit])
            if len(outcome.still_wrong) > limit:
                lines.append(f"  ... and {len(outcome.still_wrong) - limit} more")
        else:
            lines.append(f"Re-verified with {method}: the reinstalled packages are intact.")
    if outcome.verify_problem:
        lines.append(f"Re-verification incomplete: {outcome.verify_problem}")
    return lines


def outcome_exit_code(outcome: Outcome) -> int:
    """0 repaired and verified, 2 damage remains on what was repaired, 3 not everything was done."""
    if outcome.still_wrong:
        return 2
    if outcome.interrupted or outcome.failed or outcome.left or outcome.verify_problem:
        return 3
    return 0
