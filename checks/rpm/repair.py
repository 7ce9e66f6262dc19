"""Repairing what the rpm check found, on the running system (dnf) or in a mounted image.

The report only says which paths were found damaged. The RPM database of the system repaired says
which package owns each path (name, epoch, version, release, architecture) and what the file must
be (digest, mode, owner, mtime, link target), and each file as it is now says whether anything is
still to do.

- On the running system, dnf reinstalls every package with damaged files in one transaction, and
  once more what is still damaged after it.
- In an image, nothing from the image runs: the package file whose header digest the database
  recorded is found in the image's dnf/yum/zypper cache (or `--archives`), each damaged file's bytes
  are taken from its payload, checked against the database's file digest, and written in place with
  the database's owner, mode and mtime (`restore`).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

from fsaudit.hashing import HashRequest, hash_one
from fsaudit.model import Finding
from fsaudit.outcomes import local_change
from fsaudit.repair import Outcome, Section, Step, Stop
from fsaudit.repair.packages import PackageRepairer
from fsaudit.target import Target
from fsaudit_checks.rpm import header as hdr
from fsaudit_checks.rpm import iso
from fsaudit_checks.rpm.cache import PackageCache
from fsaudit_checks.rpm.compare import Accounts, finish, plan
from fsaudit_checks.rpm.db import DEFAULT_DBPATHS, Damage, find_databases, reader_for

# rpm's own rules for the parts of a NEVRA (rpmbuild refuses anything else in a name, version, release).
NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")
VERSION = re.compile(r"^[A-Za-z0-9._+~^]+$")
ARCH = re.compile(r"^[A-Za-z0-9_]+$")

FILE_CODES = frozenset(
    {
        "missing",
        "content-differs",
        "type-differs",
        "link-differs",
        "metadata-differs",
        "unreadable",
        "modified-after-install",
        "config-differs",
    }
)


@dataclass
class Installed:
    """One installed package as the database records it."""

    header: hdr.Header
    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    install_time: int | None

    @classmethod
    def of(cls, header: hdr.Header) -> Installed:
        return cls(
            header,
            header.string(hdr.NAME),
            header.integer(hdr.EPOCH),
            header.string(hdr.VERSION),
            header.string(hdr.RELEASE),
            header.string(hdr.ARCH) or "noarch",
            header.integer(hdr.INSTALLTIME),
        )

    @property
    def nevra(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"

    @property
    def label(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch else ""
        return f"{self.name} {epoch}{self.version}-{self.release} ({self.arch})"

    def valid(self) -> bool:
        return bool(
            NAME.match(self.name)
            and VERSION.match(self.version)
            and VERSION.match(self.release)
            and ARCH.match(self.arch)
            and (self.epoch is None or 0 <= self.epoch < 2**31)
        )


@dataclass
class OwnedPath:
    """A file of an installed package, as the database describes it, and the finding that named it."""

    package: Installed
    entry: hdr.FileEntry
    algorithm: str | None
    finding: Finding | None = None


@dataclass
class RpmStep:
    package: Installed
    paths: List[OwnedPath] = field(default_factory=list)
    source: Target | None = None
    rpm: bytes = b""


class RpmRepairer(PackageRepairer):
    """Restores the files of RPM packages: dnf on the running system, the cached .rpm in an image."""

    file_codes = FILE_CODES
    conffile_codes = frozenset({"config-differs"})
    image_actions = (
        "(each file is written from the package file's payload once its digest matches the package "
        "database, with the database's owner, mode and mtime; nothing from the image is run)"
    )

    # -- planning --------------------------------------------------------------------------------

    def valid(self, package: Installed) -> bool:
        return package.valid()

    def no_owner(self) -> str:
        return (
            f"no package installed at {self.request.root} owns this path: the report may be about "
            "another system or an older state of this one; audit again"
        )

    def judging(self) -> Callable[[OwnedPath], Tuple[str, str]]:
        accounts = _accounts(self.target)
        return lambda owned: self._now(owned, accounts)

    def step_key(self, package: Installed) -> str:
        return package.nevra

    def new_step(self, package: Installed) -> RpmStep:
        return RpmStep(package)

    def owners(self, wanted: set) -> Tuple[Dict[bytes, List[OwnedPath]], str]:
        """Every installed package's entry for each wanted path, or why the database cannot say."""
        databases = [
            db for db in find_databases(self.target, DEFAULT_DBPATHS) if db.kind in ("sqlite", "bdb")
        ]
        if not databases:
            return {}, f"no RPM database fsaudit can read at {self.request.root}"
        found: Dict[bytes, List[OwnedPath]] = {}
        for record in reader_for(self.target, databases[0]).records():
            if isinstance(record, Damage) or (databases[0].kind == "bdb" and record.key == 0):
                continue
            try:
                header = hdr.Header(record.blob)
                if header.check_digest()[0] == "mismatch":
                    continue
                entries = hdr.file_entries(header)
                algorithm = hdr.digest_algorithm(header) if entries else None
            except hdr.HeaderError:
                continue
            package = Installed.of(header)
            for entry in entries:
                if entry.path in wanted:
                    found.setdefault(entry.path, []).append(OwnedPath(package, entry, algorithm))
        return found, ""

    def _now(self, owned: OwnedPath, accounts: Accounts) -> Tuple[str, str]:
        """(verdict, why): "intact", "damaged", "config" or "local-change" (left alone unless asked),
        or "unchecked" — as rpm -V would see the path now."""
        outcome = plan(owned.entry, self.target, accounts)
        if outcome.skipped:
            return "intact", ""
        if outcome.denied:
            return "unchecked", "cannot look at it now (permission denied): run repair as root"
        if outcome.hash_needed and owned.algorithm and owned.entry.digest:
            result = hash_one(self.target, HashRequest(owned.entry.path, owned.algorithm, follow=False))
            finish(outcome, result.digest, result.error, result.anomaly)
            if outcome.denied:
                return "unchecked", "cannot read it now (permission denied): run repair as root"
        outcome.flags.discard("T")
        if not outcome.missing and not outcome.flags and not outcome.unreadable and not outcome.type_differs:
            return "intact", ""
        if outcome.config and not self.request.allow_conffiles:
            return "config", (
                "a configuration file, which its administrator may have changed: --allow-conffiles replaces "
                "it with the packaged version (the current one is kept as .rpmsave)"
            )
        if outcome.flags & {"S", "5"} and not self.request.include_modified and outcome.st is not None:
            mtime, installed = outcome.st.st_mtime, owned.package.install_time
            if local_change(mtime, installed, self.request.window):
                return "local-change", (
                    f"changed on the system on {iso(mtime)}, after the package was installed on "
                    f"{iso(installed)}: --include-modified restores the packaged version"
                )
        return "damaged", ""

    def add_step(self, section: Section, step: RpmStep) -> None:
        package = step.package
        findings = [owned.finding for owned in step.paths]
        paths = sorted({os.fsdecode(owned.entry.path) for owned in step.paths})
        if not self.request.live:
            found = self._find_rpm(package)
            if found is None:
                where = " or ".join(["the dnf/yum/zypper cache of the image", *self.request.archives])
                why = (
                    f"no package file of {package.label} in {where}: download that exact version "
                    f"(dnf download {package.nevra}) into a directory and give it with --archives DIR"
                )
                section.cannot.extend((f, why) for f in findings)
                return
            step.source, step.rpm = found
        source = (
            os.fsdecode(step.source.host_path(step.rpm)) if step.source else "the configured repositories"
        )
        section.steps.append(Step(self.check, package.label, findings, paths, source, step))

    def _find_rpm(self, package: Installed) -> Tuple[Target, bytes] | None:
        """The cached package file whose header is the installed one's (by the digest rpm recorded)."""
        try:
            stored = package.header.stored_digest()
        except hdr.HeaderError:
            stored = None
        if not stored:
            return None
        caches = [PackageCache(self.target)]
        caches += [PackageCache(Target(directory), dirs=("/",)) for directory in self.request.archives]
        for cache in caches:
            found = cache.find(*stored)
            if found is not None:
                return cache.target, found[0]
        return None

    # -- the running system: one dnf transaction -------------------------------------------------

    @staticmethod
    def transaction(nevras: Sequence[str]) -> List[str]:
        return ["dnf", "reinstall", "-y", "--", *nevras]

    def transaction_of(self, steps: Sequence[Step]) -> List[str]:
        return self.transaction([step.data.package.nevra for step in steps])

    def transaction_lines(self, steps: Sequence[Step]) -> List[str]:
        return [
            f"$ {shlex.join(self.transaction_of(steps))}",
            "(what is still damaged after it is reinstalled once more)",
        ]

    # -- applying --------------------------------------------------------------------------------

    def apply(self, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
        if self.request.live:
            return self._reinstall(section, say, stop)
        from fsaudit_checks.rpm.restore import restore_steps

        return restore_steps(self, section, say, stop)

    def _reinstall(self, section: Section, say, stop: Stop) -> Outcome:
        from fsaudit.repair.commands import environment, tail, transact

        outcome = Outcome()
        if stop.requested:
            outcome.left.extend(section.steps)
            return outcome
        env = environment()
        steps, status, output, _ = transact(
            self.transaction_of, section.steps, self._still_damaged, env, say, stop
        )
        for step in section.steps:
            if step in steps:
                said = f"dnf exited with {status}: " if status else ""
                outcome.failed.append((step, f"its files are still not as packaged ({said}{tail(output)})"))
            else:
                outcome.done.append(step)
        return outcome

    def _still_damaged(self, step: Step) -> bool:
        accounts = _accounts(self.target)
        return any(self._now(owned, accounts)[0] != "intact" for owned in step.data.paths)


def _accounts(target: Target) -> Accounts:
    texts = []
    for path in ("/etc/passwd", "/etc/group"):
        try:
            texts.append(target.read_text(path, limit=16 << 20))
        except OSError:
            texts.append("")
    return Accounts(*texts)
