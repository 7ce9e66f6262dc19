"""Planning the repair of packaged files: what every package manager's repairer does alike.

A report only says which paths were found damaged. The package database of the system repaired
says which package lists each path, and the path as it is now says what is left to do: nothing
(intact), restore it (damaged), leave it alone unless asked (a configuration file, a local change),
or tell the owner (it cannot be looked at here). A package is restored as a whole, so on the running
system a package with a local change left alone is not reinstalled either.

What differs between managers (reading the database, judging a path, finding a package file, the
transaction) each subclass supplies; the rules of the plan are written once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Hashable, Iterable, List, Sequence, Tuple

from fsaudit.model import Finding, Severity
from fsaudit.repair import Repairer, Section, Step, finding_path

# What a repairer's judge says of a path as it is now; any other verdict (a configuration file) is
# left alone with its reason.
INTACT = "intact"
DAMAGED = "damaged"
UNCHECKED = "unchecked"
LOCAL_CHANGE = "local-change"

NOT_CHECKED = "it was not checked (permission denied), which is no sign of damage: audit again as root"
_PERMISSION_ERRNOS = ("EACCES", "EPERM")
_PERMISSION_TEXTS = ("Permission denied", "Operation not permitted")


def permission_denied(finding: Finding) -> bool:
    """Whether an `unreadable` finding says only that the file could not be read for lack of
    permission (by its errno name or its error text), which is no sign of damage."""
    details = finding.details if isinstance(finding.details, dict) else {}
    return finding.code == "unreadable" and (
        details.get("errno") in _PERMISSION_ERRNOS
        or any(text in str(details.get("error", "")) for text in _PERMISSION_TEXTS)
    )


def not_a_file_repair(finding: Finding, codes: Iterable[str]) -> str:
    """Why a finding is not one a package restores ('' when it is), from the report's words alone."""
    if finding.code not in codes:
        return finding.advice or "restore it from a backup"
    if permission_denied(finding):
        return NOT_CHECKED
    if finding_path(finding) is None:
        return "the report gives no usable path for it"
    return ""


class PackageRepairer(Repairer, ABC):
    """A repairer that restores the files of installed packages.

    Subclasses name the codes they restore and supply `owners` (the database's entries of wanted
    paths), `valid` (a package the manager would accept), `judging` (how a path is judged now),
    `step_key`, `new_step` and `add_step` (a package to restore), and `transaction_lines` (what the
    plan shows for the running system): abstract methods, so a repairer missing one cannot even be
    made. The paths a step holds carry `package` and `finding`.
    """

    # Codes whose path may be restored as packaged (the path as it is now decides whether it is).
    file_codes: frozenset = frozenset()
    # Codes about configuration files, which are restored only with --allow-conffiles.
    conffile_codes: frozenset = frozenset()
    # What the plan shows for an image (nothing from it runs).
    image_actions = (
        "(each file is written from the package file once its digest matches the package database, "
        "with the database's owner, mode and mtime; nothing from the image is run)"
    )

    # -- what each manager supplies --------------------------------------------------------------

    @abstractmethod
    def owners(self, wanted: set) -> Tuple[Dict[bytes, list], str]:
        """Every installed package's entry for each wanted path, or why the database cannot say."""

    @abstractmethod
    def valid(self, package: Any) -> bool:
        """Whether the database's names for the package are what the manager itself would accept."""

    @abstractmethod
    def judging(self) -> Callable[[Any], Tuple[str, str]]:
        """How this plan judges an owned path as it is now: (verdict, why)."""

    @abstractmethod
    def step_key(self, package: Any) -> Hashable:
        """What tells apart the packages to restore (steps are planned in its order)."""

    @abstractmethod
    def new_step(self, package: Any) -> Any:
        """The repairer's data of a step restoring `package`, with an empty `paths` list."""

    @abstractmethod
    def add_step(self, section: Section, step: Any) -> None:
        """Add the step to the section, or its findings to what cannot be repaired, and why."""

    @abstractmethod
    def transaction_lines(self, steps: Sequence[Step]) -> List[str]:
        """What the plan shows for the running system: the command, and how it is made safe."""

    def named_by(self, owned: Any, details: Dict) -> bool:
        """Whether the finding's details name the package of `owned`."""
        return owned.package.name == details.get("package")

    def no_owner(self) -> str:
        return (
            f"no package installed at {self.request.root} lists this path: the report may be about "
            "another system or an older state of this one; audit again"
        )

    # -- planning --------------------------------------------------------------------------------

    def plan(self, findings: Sequence[Finding]) -> Section:
        section = Section(self.check)
        wanted: Dict[bytes, List[Finding]] = {}
        for finding in findings:
            why = not_a_file_repair(finding, self.file_codes)
            if why:
                section.cannot.append((finding, why))
            else:
                wanted.setdefault(finding_path(finding), []).append(finding)
        if not wanted:
            return section
        owners, problem = self.owners(set(wanted))
        if problem:
            section.cannot.extend((f, problem) for fs in wanted.values() for f in fs)
            return section
        steps, changed = self._sort(section, wanted, owners)
        if self.request.live:
            self._keep_local_changes(section, steps, changed)
        for key in sorted(steps):
            self.add_step(section, steps[key])
        if section.steps:
            live = self.request.live
            section.actions = self.transaction_lines(section.steps) if live else [self.image_actions]
        return section

    def _sort(self, section: Section, wanted: Dict[bytes, List[Finding]], owners: Dict[bytes, list]):
        """Each wanted path to its package's step, or to what is intact, left alone or cannot be
        done; (the steps by key, how many local changes each package has)."""
        judge = self.judging()
        steps: Dict[Hashable, Any] = {}
        changed: Dict[Hashable, int] = {}
        for path, named in wanted.items():
            owned = self._owner(owners.get(path, []), named[0])
            if owned is None:
                section.cannot.extend((f, self.no_owner()) for f in named)
                continue
            owned.finding = named[0]
            verdict, why = judge(owned)
            key = self.step_key(owned.package)
            if verdict == INTACT:
                section.intact.extend(named)
            elif verdict == UNCHECKED:
                section.cannot.extend((f, why) for f in named)
            elif verdict == DAMAGED:
                steps.setdefault(key, self.new_step(owned.package)).paths.append(owned)
            else:
                section.left_alone.extend((f, why) for f in named)
                if verdict == LOCAL_CHANGE:
                    changed[key] = changed.get(key, 0) + 1
        return steps, changed

    def _owner(self, owned: list, finding: Finding) -> Any:
        """The package whose entry is repaired: the one the report names when it is among the
        owners (packages share files and directories), else the first; never one the manager would
        refuse."""
        owned = [o for o in owned if self.valid(o.package)]
        details = finding.details if isinstance(finding.details, dict) else {}
        for candidate in owned:
            if self.named_by(candidate, details):
                return candidate
        return owned[0] if owned else None

    @staticmethod
    def _keep_local_changes(section: Section, steps: Dict, changed: Dict[Hashable, int]) -> None:
        """A reinstall rewrites every file of the package: on the running system a package with
        local changes is reinstalled only when the operator asks for it (--include-modified)."""
        for key, count in changed.items():
            step = steps.pop(key, None)
            if step is None:
                continue
            why = (
                f"reinstalling {step.package.name} would also undo the {count} local change(s) left alone in "
                "it: --include-modified reinstalls it anyway"
            )
            section.left_alone.extend((owned.finding, why) for owned in step.paths)

    # -- checking again --------------------------------------------------------------------------

    def recheck_options(self, steps: Sequence[Step]) -> Dict[str, list]:
        return {"packages": sorted({step.data.package.name for step in steps})}

    def still_damaged(self, finding: Finding, steps: Sequence[Step]) -> bool:
        if finding.severity is Severity.INFO or finding.code not in self.file_codes:
            return False
        if finding.code in self.conffile_codes and not self.request.allow_conffiles:
            return False
        if finding.code == "modified-after-install" and not self.request.include_modified:
            return False
        if self.request.live:
            # A reinstall rewrites the whole package: any of its files still wrong counts.
            names = {step.data.package.name for step in steps}
            return isinstance(finding.details, dict) and finding.details.get("package") in names
        return finding.path in {path for step in steps for path in step.paths}
