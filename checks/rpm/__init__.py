"""The `rpm` checker: every file RPM installed, verified the way `rpm -Va` does, from the image itself."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Iterator, List

from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import HashRequest, hash_files, start_workers
from fsaudit.model import Finding
from fsaudit.outcomes import changed_after
from fsaudit.target import file_kind
from fsaudit_checks.rpm import header as hdr
from fsaudit_checks.rpm.cache import PackageCache
from fsaudit_checks.rpm.compare import Accounts, Outcome, attribute_marker, finish, flag_string, plan
from fsaudit_checks.rpm.db import DEFAULT_DBPATHS, Damage, Database, find_databases, reader_for

ACCOUNT_FILE_LIMIT = 16 << 20
# A file's mtime this much after its package's installation is a change made on the system.


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


class Package:
    """The identity of one installed package, as every finding about it carries it.

    `image` is where the audited system is mounted when it is not this one: advice then says to act
    inside the VM, or to run fsaudit repair from the host, never a command that would act on the host.
    """

    def __init__(self, header: hdr.Header, image: str | None = None, installed: hdr.Header | None = None):
        self.name = header.string(hdr.NAME)
        self.version = hdr.version_string(header)
        self.arch = header.string(hdr.ARCH) or "noarch"
        self.image = image
        # When rpm installed it (the database's own header; a package file has none).
        self.install_time = (installed or header).integer(hdr.INSTALLTIME)

    @property
    def subject(self) -> str:
        return f"{self.name} {self.version}"

    def details(self) -> dict:
        return {"package": self.name, "version": self.version, "architecture": self.arch}

    @property
    def inside(self) -> str:
        return "" if self.image is None else " inside the VM"

    @property
    def reinstall(self) -> str:
        commands = f"dnf reinstall {self.name}; yum on EL7; zypper install -f on SUSE"
        if self.image is None:
            return f"reinstall the package {self.name} ({commands}) or restore the file from a backup"
        return (
            f"reinstall the package {self.name} inside the VM ({commands}), or restore its files from this "
            f"host: fsaudit repair REPORT.json --root {self.image}"
        )


class RpmChecker(Checker):
    """Verify every file installed by RPM (size, digest, mode, owner, link, mtime) like rpm -Va."""

    name = "rpm"
    covers = "system files (RPM packages)"
    category = "os-files"
    repairer = "fsaudit_checks.rpm.repair:RpmRepairer"
    options = (
        Option("dbpath", "directory of the RPM database inside the root (default: found automatically)"),
        Option("packages", "verify only these packages (names)", multiple=True),
    )
    codes = {
        "missing": "a packaged file is gone",
        "content-differs": "a packaged file's size or digest differs from the package (S or 5) and its "
        "mtime is not after the package's installation, or is in the suspect window",
        "modified-after-install": "a packaged file's content differs and its mtime is after the package's "
        "installation, outside the suspect window: a change made on the system",
        "type-differs": "something other than the packaged file type stands there (a FIFO, a directory, ...)",
        "link-differs": "a packaged symlink points somewhere else (L)",
        "metadata-differs": "mode, owner, group or device number differ while the content is intact",
        "mtime-differs": "only the modification time differs; the content is intact (T)",
        "config-differs": "a %config file differs from the packaged one (often an intended edit)",
        "unreadable": "a packaged file or link could not be read (an I/O error), so it could not be verified",
        "header-damaged": "a package's header in the RPM database is damaged: its files cannot be verified",
        "database-damaged": "part of the RPM database cannot be read: the packages it held were not verified",
        "database-unsupported": "the RPM database is in a format fsaudit cannot read (NDB Packages.db)",
    }

    _image: str | None = None

    @property
    def _inside(self) -> str:
        """Where a command in the advice must run: the VM, when the audited system is an image here."""
        return "" if self._image is None else " inside the VM"

    def _dbpaths(self) -> tuple:
        return (self.settings["dbpath"],) if self.settings["dbpath"] else DEFAULT_DBPATHS

    def applies(self, target) -> bool:
        if not find_databases(target, self._dbpaths()):
            raise Skip(f"no RPM database in {' or '.join(self._dbpaths())}")
        return True

    def run(self, target) -> Iterator[Finding]:
        databases = find_databases(target, self._dbpaths())
        if not databases:
            raise Skip(f"no RPM database in {' or '.join(self._dbpaths())}")
        self._image = None if target.live else target.root_text
        database = yield from self._choose(databases)
        if database is None:
            return
        self.stats["database"] = f"{database.kind} {database.display}"
        start_workers(self.context)  # the worker processes start while the package headers are read
        self.count("not_checked_permission", 0)
        accounts = self._accounts(target)
        self._cache = PackageCache(target)
        ready: List[Finding] = []
        requests = self._requests(target, database, accounts, ready)
        for result in hash_files(target, requests, self.context, self.stats):
            yield from ready
            ready.clear()
            outcome, package = result.request.key
            finish(outcome, result.digest, result.error, result.anomaly)
            if outcome.denied:
                self.count("not_checked_permission")
                self.count("files_verified", -1)
                continue
            finding = self._finding(outcome, package)
            if finding:
                yield finding
        yield from ready
        self.context.progress.stop()
        denied = self.stats["not_checked_permission"]
        if denied:
            self.incomplete(f"{denied:,} files not checked: permission denied (run as root to check them)")

    def _choose(self, databases: List[Database]) -> Iterator[Finding]:
        """The newest readable database; findings for a damaged or unsupported one (generator return)."""
        for database in databases:
            if database.kind in ("sqlite", "bdb"):
                return database
            if database.kind == "ndb":
                yield self.finding(
                    "database-unsupported",
                    "warning",
                    "the RPM database is an NDB Packages.db, which fsaudit cannot read: nothing was verified",
                    path=database.path,
                    advice="run `rpm -Va` inside the VM, or convert a copy of the database to sqlite with "
                    "`rpmdb --rebuilddb --define '_db_backend sqlite'` and audit that",
                )
                self.incomplete("the NDB package database is not supported")
            else:
                yield self.finding(
                    "database-damaged",
                    "critical",
                    f"{database.display} is not an RPM database any more (its header is damaged)",
                    path=database.path,
                    details={"expected_format": database.details.get("expected")},
                    advice="restore the RPM database from a backup, then run `rpmdb --rebuilddb`"
                    + self._inside,
                )
                self.incomplete(f"{database.display} could not be read")
        return None

    def _accounts(self, target) -> Accounts:
        texts = []
        for path in ("/etc/passwd", "/etc/group"):
            try:
                texts.append(target.read_text(path, limit=ACCOUNT_FILE_LIMIT))
            except OSError:
                texts.append("")
        return Accounts(*texts)

    # -- the stream of files ----------------------------------------------------------------------

    def _requests(self, target, database: Database, accounts: Accounts, ready: List[Finding]):
        """HashRequests for the files whose digest must be computed; every other verdict goes to `ready`."""
        wanted = set(self.settings["packages"])
        self.context.progress.start("rpm: packages")
        for item in reader_for(target, database).records():
            if isinstance(item, Damage):
                ready.append(self._damage_finding(database, item))
                continue
            if database.kind == "bdb" and item.key == 0:
                continue  # rpm keeps its next record number under key 0
            loaded = self._load(database, item, ready)
            if loaded is None:
                continue
            header, package, installed = loaded
            if wanted and package.name not in wanted:
                continue
            self.count("packages")
            self.context.progress.advance()
            yield from self._package_requests(target, database, header, installed, package, accounts, ready)

    def _load(self, database: Database, item, ready: List[Finding]):
        """(header, package, installed header) of a record whose manifest can be trusted: its own
        header when intact, else a cached package file with the recorded header digest; a finding
        in `ready` when the header is damaged."""
        try:
            header = hdr.Header(item.blob)
            package = Package(header, self._image)
        except hdr.HeaderError as error:
            ready.append(self._header_finding(database, item.key, str(error)))
            return None
        try:
            verdict, algorithm = header.check_digest()
            problem = f"its {algorithm} header digest does not match" if verdict == "mismatch" else None
        except hdr.HeaderError as error:
            problem = str(error)
        if not problem:
            return header, package, None
        # The name may itself be damaged, but it is the best lead the admin has.
        cached = self._cached_manifest(header)
        ready.append(self._header_finding(database, item.key, problem, package=package, cached=cached))
        if cached is None:
            return None
        return cached[1], Package(cached[1], self._image, installed=header), header

    def _cached_manifest(self, header: hdr.Header):
        try:
            stored = header.stored_digest()
        except hdr.HeaderError:
            return None
        return self._cache.find(*stored) if stored else None

    def _package_requests(self, target, database, header, installed, package: Package, accounts, ready):
        try:
            entries = hdr.file_entries(header, installed)
            algorithm = hdr.digest_algorithm(header) if entries else None
        except hdr.HeaderError as error:
            ready.append(self._header_finding(database, None, str(error), package=package))
            return
        if entries and algorithm is None:
            self.incomplete(f"{package.name}: unknown file digest algorithm, file contents not verified")
        for entry in entries:
            outcome = plan(entry, target, accounts)
            if outcome.skipped:
                self.count("files_skipped")
                continue
            if outcome.denied:
                self.count("not_checked_permission")
                continue
            self.count("files_verified")
            self.context.verified.add(entry.path)
            if outcome.hash_needed and algorithm and entry.digest:
                expected_size = entry.size if "S" not in outcome.flags else None
                yield HashRequest(entry.path, algorithm, expected_size, key=(outcome, package), follow=False)
                continue
            finding = self._finding(outcome, package)
            if finding:
                ready.append(finding)

    # -- findings ---------------------------------------------------------------------------------

    def _finding(self, outcome: Outcome, package: Package) -> Finding | None:
        entry = outcome.entry
        marker = attribute_marker(entry.flags)
        details = package.details()
        if outcome.missing:
            details.update({"flags": "missing", "attribute": marker.strip()})
            if outcome.error:
                details["error"] = outcome.error
            return self.finding(
                "missing",
                "critical",
                "packaged file is missing" + (f" ({outcome.error})" if outcome.error else ""),
                path=entry.path,
                subject=package.subject,
                details=details,
                advice=package.reinstall,
            )
        if not outcome.flags and not outcome.unreadable:
            return None
        flags = flag_string(outcome)
        code, severity, message, advice = self._classify(outcome, package)
        details.update({"flags": flags, "attribute": marker.strip()})
        details.update(_differences(outcome))
        self.count(f"files_{code.replace('-', '_')}")
        return self.finding(
            code,
            severity,
            f"{message} ({flags}{' ' + marker if marker.strip() else ''})",
            path=entry.path,
            subject=package.subject,
            details=details,
            advice=advice,
        )

    def _classify(self, outcome: Outcome, package: Package):
        flags = outcome.flags
        if outcome.unreadable:
            error = f": {outcome.error}" if outcome.error else ""
            return "unreadable", "warning", f"packaged file could not be read{error}", package.reinstall
        if outcome.config:
            return (
                "config-differs",
                "warning",
                "configuration file differs from the packaged one",
                f"check whether this change to a configuration file of {package.name} was intended; if not, "
                f"restore it from a backup (the packaged version: `rpm2cpio {package.name}-*.rpm`)",
            )
        if outcome.type_differs:
            kind = file_kind(outcome.st.st_mode)
            return (
                "type-differs",
                "critical",
                f"a {kind} stands where the package installed a {file_kind(outcome.entry.mode)}",
                package.reinstall,
            )
        if flags & {"S", "5"}:
            return self._content_differs(outcome, package)
        if "L" in flags:
            return "link-differs", "critical", "symlink points elsewhere than packaged", package.reinstall
        if flags & {"M", "D", "U", "G"}:
            return (
                "metadata-differs",
                "warning",
                "mode, owner or device differs from the package",
                f"restore the packaged attributes{package.inside} "
                f"(`rpm --setperms --setugids {package.name}`) or reinstall",
            )
        return (
            "mtime-differs",
            "info",
            "modification time differs; the content is intact",
            "nothing to do unless nobody should have touched this file",
        )

    def _content_differs(self, outcome: Outcome, package: Package):
        """Damage, or a change made on the system: rpm gives each file its packaged mtime, and lost
        writes change content without touching it."""
        mtime = outcome.st.st_mtime if outcome.st is not None else None
        installed = package.install_time
        window = self.context.window
        if changed_after(mtime, installed):
            outcome.actual.update(modified=iso(mtime), installed=iso(installed))
            if window is None or not window.contains(mtime):
                return (
                    "modified-after-install",
                    "warning",
                    f"content differs from the packaged file; it was changed on {iso(mtime)}, after the "
                    f"package was installed on {iso(installed)}: a change made on this system, not damage "
                    "from lost writes",
                    "if this change was made on purpose (a local edit, an update outside the package "
                    f"manager), there is nothing to do; otherwise {package.reinstall}",
                )
            outcome.actual["modified_in_window"] = True
            message = "content differs from the packaged file, and it was modified during the suspect window"
            return "content-differs", "critical", message, package.reinstall
        return "content-differs", "critical", "content differs from the packaged file", package.reinstall

    def _damage_finding(self, database: Database, damage: Damage) -> Finding:
        self.count("database_damage")
        self.incomplete("part of the RPM database could not be read")
        details = {"where": damage.where, "database": database.display, "format": database.kind}
        if damage.key is not None:
            details["record"] = damage.key
        return self.finding(
            "database-damaged",
            "critical",
            f"the RPM database is damaged at {damage.where}: {damage.message}",
            path=database.path,
            details=details,
            advice="packages recorded there were not verified: restore the RPM database from a backup "
            f"and run `rpmdb --rebuilddb`{self._inside}, then audit again; reinstall packages `rpm -qa` no "
            "longer lists",
        )

    def _header_finding(self, database: Database, key, message: str, package=None, cached=None) -> Finding:
        details = package.details() if package else {}
        if key is not None:
            details["record"] = key
        name = package.name if package else f"record {key}"
        advice = (
            "restore the RPM database from a backup or reinstall the package, then `rpmdb --rebuilddb`"
            + self._inside
        )
        if cached is None:
            self.count("packages_unverified")
            self.incomplete("some package headers are damaged: their files were not verified")
            outcome = "its files were not verified"
        else:
            self.count("packages_from_cache")
            details["manifest"] = os.fsdecode(cached[0])
            outcome = f"its files were verified against the cached package {os.fsdecode(cached[0])}"
        return self.finding(
            "header-damaged",
            "critical",
            f"the RPM database entry of {name} is damaged ({message}): {outcome}",
            path=database.path,
            subject=package.subject if package else None,
            details=details,
            advice=advice,
        )


def _differences(outcome: Outcome) -> dict:
    """Expected and actual values of each attribute that differs, for the report."""
    entry = outcome.entry
    actual = outcome.actual
    result = {}
    if "S" in outcome.flags:
        result.update(expected_size=entry.size, actual_size=actual.get("size"))
    if "5" in outcome.flags and "digest" in actual:
        result.update(expected_digest=entry.digest.decode("ascii", "replace"), actual_digest=actual["digest"])
    if "M" in outcome.flags:
        result.update(expected_mode=oct(entry.mode), actual_mode=oct(actual.get("mode", 0)))
    if "L" in outcome.flags:
        result.update(expected_link=os.fsdecode(entry.link), actual_link=os.fsdecode(actual.get("link", b"")))
    if "U" in outcome.flags:
        result.update(expected_user=os.fsdecode(entry.user), actual_user=actual.get("user"))
    if "G" in outcome.flags:
        result.update(expected_group=os.fsdecode(entry.group), actual_group=actual.get("group"))
    if "T" in outcome.flags:
        result.update(expected_mtime=entry.mtime, actual_mtime=actual.get("mtime"))
    if "D" in outcome.flags:
        result.update(expected_rdev=entry.rdev, actual_rdev=actual.get("rdev"))
    if outcome.type_differs:
        result.update(expected_type=file_kind(entry.mode), actual_type=file_kind(outcome.st.st_mode))
    if outcome.error:
        result["error"] = outcome.error
    for key in ("modified", "installed", "modified_in_window"):
        if key in actual:
            result[key] = actual[key]
    return result
