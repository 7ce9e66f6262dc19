"""Repairing what a manifest checker (`pacman`, `apk`, `portage`) found: the package manager's
reinstall on the running system, the cached package file's bytes in a mounted image.

The report only says which paths were found damaged. The package database of the system repaired
says which package lists each path, at which version, and what the path must be (digest, type, link
target, owner, mode); each path as it is now says whether anything is still to do. Names reach a
command only when they follow the manager's grammar, and after `--`.

- On the running system, the manager reinstalls every package with damaged files in one
  transaction, and once more what is still damaged after it. Each manager's subclass says how
  (`prepare` and `transaction`).
- In an image, nothing from the image runs: each damaged file is taken from the manager's cached
  package file of exactly the installed version (or from `--archives`), checked against the
  database's digest and written with the database's owner, mode and mtime (`restore`).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Sequence, Tuple, Union

from fsaudit.model import Finding
from fsaudit.repair import Outcome, Section, Step, Stop
from fsaudit.repair.commands import QUERY_TIMEOUT, run, tail
from fsaudit.repair.packages import PackageRepairer
from fsaudit.target import Target
from fsaudit_checks.manifest.archive import Member
from fsaudit_checks.manifest.current import INTACT, Judge
from fsaudit_checks.manifest.entries import (
    DIRECTORY,
    FILE,
    FILE_OR_SYMLINK,
    SPECIAL,
    SYMLINK,
    Damage,
    Entry,
    Package,
)

# Codes whose path may be restored as packaged (the path as it is now decides whether it is).
FILE_CODES = frozenset(
    {
        "missing",
        "content-differs",
        "wrong-type",
        "link-differs",
        "metadata-differs",
        "directory-missing",
        "unreadable",
        "sparse",
        "absurd-size",
        "modified-after-install",
        "conffile-changed",
        "conffile-missing",
    }
)


@dataclass
class Owned:
    """A path of an installed package as its database describes it, and the finding that named it."""

    package: Package
    entry: Entry
    finding: Finding | None = None


@dataclass
class ManifestStep:
    """A package to restore and its damaged paths; the package files that hold them (in an image,
    or for a manager that installs from a file), best first."""

    package: Package
    paths: List[Owned] = field(default_factory=list)
    sources: List[Tuple[Target, bytes]] = field(default_factory=list)
    # What the transaction names for this package (a name, an atom, a package file).
    argument: str = ""


class ManifestRepairer(PackageRepairer):
    """Restores the files of one package manager's packages. Subclasses give the manager's words,
    its database reader, its grammar, its package files and its transaction."""

    manager = ""
    file_codes = FILE_CODES
    conffile_codes = frozenset(code for code in FILE_CODES if code.startswith("conffile-"))
    # The name an edited configuration file keeps when --allow-conffiles replaces it.
    saved_suffix = b".fsaudit-old"
    # How the transaction on the running system is made safe, in words for the plan.
    transaction_note = "(what is still damaged after it is reinstalled once more)"

    def __init__(self, check: str, request):
        super().__init__(check, request)
        self.judge = Judge(self.target, request.allow_conffiles, request.include_modified, request.window)

    # -- what each manager supplies --------------------------------------------------------------

    def read_packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        raise NotImplementedError

    def label(self, package: Package) -> str:
        arch = f" ({package.architecture})" if package.architecture else ""
        return f"{package.name} {package.version}{arch}"

    def cached(self, target: Target, package: Package) -> List[bytes]:
        """Package files of exactly this package in the manager's cache of `target` (paths inside it)."""
        return []

    def archived(self, directory: Target, package: Package) -> List[bytes]:
        """Package files of exactly this package in one of the operator's `--archives` directories."""
        return []

    def cache_files(self, target: Target, package: Package, archives: bool) -> List[Tuple[Target, bytes]]:
        """Package files of exactly this package in the manager's cache of `target`, then (with
        `archives`) in the operator's `--archives` directories."""
        found = [(target, path) for path in self.cached(target, package)]
        if archives:
            for directory in self.request.archives:
                source = Target(directory)
                found += [(source, path) for path in self.archived(source, package)]
        return found

    def members(self, source: Target, path: bytes, package: Package) -> Iterator[Member]:
        """The files of a package file, streaming, once it has shown it is `package`."""
        raise NotImplementedError

    def no_package_file(self, package: Package) -> str:
        """Why an image's path cannot be restored without a package file, and what to do."""
        return f"no package file of {self.label(package)} in the image or --archives"

    def transaction(self, steps: Sequence[Step]) -> List[str]:
        """The command that reinstalls every step's package, in one transaction."""
        raise NotImplementedError

    def transaction_lines(self, steps: Sequence[Step]) -> List[str]:
        """What the plan shows for the running system: the command, and how it is made safe."""
        return [f"$ {shlex.join(self.transaction(steps))}", self.transaction_note]

    def prepare(
        self, steps: List[Step], env: Dict[str, str], say
    ) -> Tuple[List[Step], List[Tuple[Step, str]]]:
        """Before the transaction on the running system: the steps it can do, and the refused ones
        with why (a version the repositories lack, a transaction that would change other packages)."""
        return steps, []

    def simulated(
        self,
        steps: List[Step],
        env: Dict[str, str],
        read: Callable[[str, List[Step]], Tuple[List[Step], List[str]]],
        unavailable: Callable[[Package], str],
        verb: str,
    ) -> Tuple[List[Step], List[Tuple[Step, str]]]:
        """`prepare` for a manager that simulates its transaction (`transaction(steps, simulate=True)`):
        each package it cannot get is refused with `unavailable(package)` and the rest simulated
        again; then everything is refused when it fails, or would also `verb` other packages.
        `read(output, steps)` says (the steps it cannot get, the other changes it would make)."""
        steps = list(steps)
        refused: List[Tuple[Step, str]] = []
        for _ in range(len(steps) + 1):
            if not steps:
                break
            command = self.transaction(steps, simulate=True)
            status, output = run(command, env, timeout=QUERY_TIMEOUT)
            lacking, others = read(output, steps)
            if lacking:
                for step in lacking:
                    steps.remove(step)
                    refused.append((step, unavailable(step.data.package)))
                continue
            if status != 0:
                why = f"{command[0]} cannot plan it: {tail(output)}"
                return [], refused + [(step, why) for step in steps]
            if others:
                why = f"not run: {command[0]} would also {verb} other packages ({', '.join(others[:10])})"
                return [], refused + [(step, why) for step in steps]
            return steps, refused
        return steps, refused

    # -- planning --------------------------------------------------------------------------------

    def no_owner(self) -> str:
        return (
            f"no package installed at {self.request.root} lists this path (or its {self.manager} "
            "database names it in a way the package manager would refuse): the report may be about "
            "another system or an older state of this one; audit again"
        )

    def judging(self) -> Callable[[Owned], Tuple[str, str]]:
        return lambda owned: self.judge.verdict(owned.package, owned.entry)

    def step_key(self, package: Package) -> Tuple[str, str]:
        return (package.name, package.version)

    def new_step(self, package: Package) -> ManifestStep:
        return ManifestStep(package)

    def owners(self, wanted: set) -> Tuple[Dict[bytes, List[Owned]], str]:
        """Every installed package's entry for each wanted path, or why the database cannot say."""
        found: Dict[bytes, List[Owned]] = {}
        packages = 0
        problem = ""
        for thing in self.read_packages(self.target):
            if isinstance(thing, Damage):
                problem = problem or f"{os.fsdecode(thing.path)} {thing.problem}"
                continue
            packages += 1
            for entry in thing.entries:
                if isinstance(entry, Entry) and entry.path in wanted:
                    found.setdefault(entry.path, []).append(Owned(thing, entry))
        if not packages:
            return {}, (
                f"the {self.manager} database at {self.request.root} lists no package"
                + (f" ({problem})" if problem else "")
                + ": restore the database from a backup, then audit again"
            )
        return found, ""

    def add_step(self, section: Section, step: ManifestStep) -> None:
        package = step.package
        if not self.request.live and not self._image_sources(section, step):
            return
        findings = [owned.finding for owned in step.paths]
        paths = sorted({os.fsdecode(owned.entry.path) for owned in step.paths})
        if self.request.live:
            source = f"the configured repositories or {self.manager}'s cache"
        elif step.sources:
            source = os.fsdecode(step.sources[0][0].host_path(step.sources[0][1]))
        else:
            source = "the package database (links and directories)"
        section.steps.append(Step(self.check, self.label(package), findings, paths, source, step))

    def _image_sources(self, section: Section, step: ManifestStep) -> bool:
        """Find the package files an image's step is restored from; what cannot be restored in an
        image goes to the owner's list. Whether anything is left to restore."""
        keep = []
        for owned in step.paths:
            why = _not_in_an_image(owned.entry, self.reinstall_words(step.package))
            if why:
                section.cannot.append((owned.finding, why))
            else:
                keep.append(owned)
        step.paths = keep
        step.sources = self.cache_files(self.target, step.package, archives=True) if keep else []
        if not step.sources:
            # Links and directories the database describes fully need no package file.
            why = self.no_package_file(step.package)
            section.cannot.extend((o.finding, why) for o in step.paths if not described_fully(o.entry))
            step.paths = [o for o in step.paths if described_fully(o.entry)]
        return bool(step.paths)

    def reinstall_words(self, package: Package) -> str:
        """Reinstalling the package inside the VM, in words with the command."""
        return f"reinstall the package {package.name} inside the VM"

    # -- applying --------------------------------------------------------------------------------

    def apply(self, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
        if self.request.live:
            from fsaudit_checks.manifest.reinstall import reinstall

            return reinstall(self, section, say, stop)
        from fsaudit_checks.manifest.restore import restore_steps

        return restore_steps(self, section, say, stop)

    def still_to_do(self, step: Step) -> List[Owned]:
        """The step's paths that are not as packaged now."""
        return [o for o in step.data.paths if self.judge.verdict(o.package, o.entry)[0] != INTACT]


def _not_in_an_image(entry: Entry, reinstall: str) -> str:
    """Why a path cannot be restored in an image from a package file ('' when it can)."""
    if entry.kind == SPECIAL:
        return f"a {entry.special or 'special file'}, which repair does not create in an image: {reinstall}"
    if entry.kind in (FILE, FILE_OR_SYMLINK) and (not entry.digest or not entry.algorithm):
        return (
            f"the package database records no checksum for it, so no copy of it can be verified: {reinstall}"
        )
    return ""


def described_fully(entry: Entry) -> bool:
    """Whether the database alone says all there is to restore the path (a link's target, a
    directory's mode)."""
    return (entry.kind == SYMLINK and entry.link is not None) or (
        entry.kind == DIRECTORY and entry.mode is not None
    )
