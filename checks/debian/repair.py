"""Repairing what the debian check found, on the running system (apt) or in a mounted image.

The report only says which paths were found damaged. The dpkg database of the system repaired says
which package lists each path and at which version, and each file as it is now says whether it is
still damaged, changed on purpose (a conffile, a change made after installation) or fine again.

- On the running system, apt reinstalls every package with damaged files in one transaction: dpkg
  unpacks them all, then configures them in dependency order, so that no maintainer script runs while
  a library it needs (libc6) is still damaged. What did not finish is configured again once the rest
  is whole.
- In an image, nothing from the image runs (its maintainer scripts would run as root on the host):
  each damaged file's bytes come from the package's `.deb` in the image's apt cache (or in
  `--archives`), are checked against the database's MD5 and written in place (`restore`).
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from fsaudit import outcomes
from fsaudit.hashing import HashRequest, hash_one
from fsaudit.model import Finding
from fsaudit.outcomes import local_change
from fsaudit.repair import Outcome, Section, Step, Stop
from fsaudit.repair.packages import PackageRepairer
from fsaudit.target import Target
from fsaudit_checks.debian import debfile, dpkg_db, placement
from fsaudit_checks.debian.dpkg_db import Package
from fsaudit_checks.debian.verdicts import iso

# Debian policy 5.6.1 (names), 5.6.12 (versions), and dpkg's architecture names.
NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
VERSION = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")
ARCHITECTURE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# Codes whose path may be restored as packaged (the state of the file now decides whether it is).
FILE_CODES = frozenset(
    {
        "missing",
        "content-differs",
        "wrong-type",
        "unreadable",
        "sparse",
        "absurd-size",
        "directory-missing",
        "symlink-missing",
        "modified-after-install",
        "conffile-changed",
        "conffile-missing",
    }
)
APT_KEEP_CONFFILES = ("--force-confdef", "--force-confold")
APT_RESTORE_CONFFILES = ("--force-confask", "--force-confnew", "--force-confmiss")


@dataclass
class PackagedPath:
    """One path of a package as the database describes it, and the finding that named it."""

    package: Package
    path: bytes
    location: bytes
    kind: str  # "file", "conffile" or "other" (a symlink or directory, or a file without checksum)
    expected: str
    install_time: float | None
    finding: Finding | None = None


@dataclass
class DebStep:
    """A package to restore and its damaged paths; in an image, the .deb that holds them."""

    package: Package
    paths: List[PackagedPath] = field(default_factory=list)
    source: Target | None = None
    deb: bytes = b""


def spec(package: Package) -> str:
    """`name[:arch]=version` for apt; the architecture is given unless the package is `all`."""
    qualified = (
        package.name if package.architecture in ("", "all") else f"{package.name}:{package.architecture}"
    )
    return f"{qualified}={package.version}"


def label(package: Package) -> str:
    arch = f" ({package.architecture})" if package.architecture else ""
    return f"{package.name} {package.version}{arch}"


def valid(package: Package) -> bool:
    """Whether the database's name, version and architecture are what dpkg itself would accept."""
    return bool(
        NAME.match(package.name)
        and VERSION.match(package.version)
        and (not package.architecture or ARCHITECTURE.match(package.architecture))
    )


class Database:
    """The dpkg database of the repaired system: installed packages and which of them lists a path."""

    def __init__(self, target: Target):
        self.target = target
        packages, _damage, _applied = dpkg_db.read_status(target)
        self.packages = sorted(
            (p for p in packages.values() if p.state in dpkg_db.UNPACKED_STATES),
            key=lambda p: (p.name, p.architecture),
        )
        self.diversions, _damage = placement.read_diversions(target)

    def owners(self, wanted: Iterable[bytes]) -> Dict[bytes, List[PackagedPath]]:
        """Every installed package's entry for each wanted location (diversions applied)."""
        wanted = set(wanted)
        found: Dict[bytes, List[PackagedPath]] = {}
        for package in self.packages:
            list_path = dpkg_db.info_path(self.target, package, "list")
            if list_path is None:
                continue
            try:
                install_time = self.target.lstat(list_path).st_mtime
                listed, _damage = dpkg_db.read_list(self.target, list_path)
            except OSError:
                continue
            conffiles = {
                c.path: c.md5 for c in package.conffiles if not c.obsolete and c.md5 != "newconffile"
            }
            matched = []
            for path in set(listed) | set(conffiles):
                location = placement.diverted_location(path, package.name, self.diversions)
                if location in wanted:
                    matched.append((path, location))
            # Only the packages that list a wanted path have their checksums read.
            sums = self._sums(package) if matched else {}
            for path, location in matched:
                if path in conffiles:
                    kind, expected = "conffile", conffiles[path]
                elif path in sums:
                    kind, expected = "file", sums[path]
                else:
                    kind, expected = "other", ""
                entry = PackagedPath(package, path, location, kind, expected, install_time)
                found.setdefault(location, []).append(entry)
        return found

    def _sums(self, package: Package) -> Dict[bytes, str]:
        path = dpkg_db.info_path(self.target, package, "md5sums")
        if path is None:
            return {}
        try:
            return dpkg_db.read_md5sums(self.target, path)[0]
        except OSError:
            return {}


class DebianRepairer(PackageRepairer):
    """Restores the files of dpkg packages: apt on the running system, the cached .deb in an image."""

    file_codes = FILE_CODES
    conffile_codes = frozenset(code for code in FILE_CODES if code.startswith("conffile-"))
    image_actions = (
        "(each file is written from the package file once its MD5 matches the package database, "
        "with the packaged owner, mode and mtime; nothing from the image is run)"
    )

    # -- planning --------------------------------------------------------------------------------

    def owners(self, wanted: set) -> Tuple[Dict[bytes, List[PackagedPath]], str]:
        try:
            database = Database(self.target)
        except OSError as error:
            return {}, f"the dpkg database at {self.request.root} cannot be read ({error.strerror or error})"
        return database.owners(wanted), ""

    def valid(self, package: Package) -> bool:
        return valid(package)

    def named_by(self, owned: PackagedPath, details: Dict) -> bool:
        # Multi-Arch: same packages share files: the report names the architecture too.
        package = owned.package
        return (package.name, package.architecture) == (details.get("package"), details.get("architecture"))

    def judging(self) -> Callable[[PackagedPath], Tuple[str, str]]:
        return self._now

    def step_key(self, package: Package) -> Tuple[str, str]:
        return package.key

    def new_step(self, package: Package) -> DebStep:
        return DebStep(package)

    def _now(self, entry: PackagedPath) -> Tuple[str, str]:
        """(verdict, why) for the path as it is now: "intact", "damaged", "conffile" or "local-change"
        (left alone unless asked), or "unchecked" (it cannot be looked at here)."""
        if entry.kind == "other" or not entry.expected:
            try:
                self.target.lstat(entry.location)
            except FileNotFoundError:
                return self._gone(entry)
            except PermissionError:
                return "unchecked", "cannot look at it now (permission denied): run repair as root"
            except OSError as error:
                return "unchecked", f"cannot look at it now: {error.strerror or error}"
            return "intact", ""
        result = hash_one(self.target, HashRequest(entry.location, "md5", follow=False))
        verdict = outcomes.outcome(result, entry.expected)
        if verdict == outcomes.OK:
            return "intact", ""
        if isinstance(result.error, PermissionError):
            return "unchecked", "cannot read it now (permission denied): run repair as root"
        if verdict == outcomes.MISSING and entry.kind == "file":
            return self._gone(entry)
        if entry.kind == "conffile" and not self.request.allow_conffiles:
            return "conffile", (
                "a configuration file, which its administrator may have changed: --allow-conffiles replaces "
                "it with the packaged version (the current one is kept as .dpkg-old)"
            )
        if (
            verdict == outcomes.CONTENT_DIFFERS
            and entry.kind == "file"
            and not self.request.include_modified
            and local_change(result.mtime, entry.install_time, self.request.window)
        ):
            return "local-change", (
                f"changed on the system on {iso(result.mtime)}, after the package was installed on "
                f"{iso(entry.install_time)}: --include-modified restores the packaged version"
            )
        return "damaged", ""

    def _gone(self, entry: PackagedPath) -> Tuple[str, str]:
        """A path that is gone: damage, unless the audit found it removed on the system (its
        directory changed after installation by no package installation) and nobody asked to
        restore local changes. The report can only make repair do less here, never more."""
        finding = entry.finding
        details = finding.details if finding is not None and isinstance(finding.details, dict) else {}
        removed = finding is not None and finding.code == "modified-after-install" and details.get("removed")
        if removed and not self.request.include_modified:
            return "local-change", (
                f"removed on the system: its directory changed on {details.get('directory_changed')}, after "
                "the package was installed, by no package installation; --include-modified restores it"
            )
        return "damaged", ""

    def add_step(self, section: Section, step: DebStep) -> None:
        package = step.package
        findings = [entry.finding for entry in step.paths]
        paths = sorted({os.fsdecode(entry.location) for entry in step.paths})
        if not self.request.live:
            found = self._find_deb(package)
            if found is None:
                cache = os.path.join(self.request.root, os.fsdecode(debfile.ARCHIVES).lstrip("/"))
                where = " or ".join([cache, *self.request.archives])
                why = (
                    f"no package file of {label(package)} in {where}: download that exact version "
                    f"(apt-get download {spec(package)}, or snapshot.debian.org) into a directory and give "
                    "it with --archives DIR"
                )
                section.cannot.extend((f, why) for f in findings)
                return
            step.source, step.deb = found
        source = (
            os.fsdecode(step.source.host_path(step.deb)) if step.source else "the configured repositories"
        )
        section.steps.append(Step(self.check, label(package), findings, paths, source, step))

    def _find_deb(self, package: Package) -> Tuple[Target, bytes] | None:
        """The .deb of exactly this version, by apt's file name, in the image's cache or --archives.
        Its content is verified file by file when restoring."""
        name = debfile.cache_name(package.name, package.version, package.architecture)
        places = [(self.target, debfile.ARCHIVES + b"/" + name)]
        places += [(Target(directory), b"/" + name) for directory in self.request.archives]
        for source, path in places:
            try:
                # Not followed: a symlink there is not the package file apt left.
                if stat.S_ISREG(source.lstat(path).st_mode):
                    return source, path
            except OSError:
                continue
        return None

    # -- the running system: one apt transaction -------------------------------------------------

    def _options(self) -> List[str]:
        dpkg = APT_RESTORE_CONFFILES if self.request.allow_conffiles else APT_KEEP_CONFFILES
        return [f"-o=Dpkg::Options::={option}" for option in dpkg]

    def transaction(self, specs: Sequence[str], simulate: bool = False) -> List[str]:
        """The apt command that reinstalls `specs` at their installed versions, and nothing else."""
        command = ["apt-get", "install", "--reinstall", "--no-remove", "-y"]
        if simulate:
            command.append("-s")
        return [*command, *self._options(), "--", *specs]

    def transaction_lines(self, steps: Sequence[Step]) -> List[str]:
        specs = [spec(step.data.package) for step in steps]
        return [
            f"$ {shlex.join(self.transaction(specs))}",
            "(simulated first and refused if apt would install, upgrade or remove anything else; "
            "a package left unconfigured is configured again once the rest is whole)",
        ]

    # -- applying --------------------------------------------------------------------------------

    def apply(self, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
        if self.request.live:
            from fsaudit_checks.debian.reinstall import reinstall

            return reinstall(self, section, say, stop)
        from fsaudit_checks.debian.restore import restore_steps

        return restore_steps(self, section, say, stop)
