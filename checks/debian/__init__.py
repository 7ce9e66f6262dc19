"""Checker `debian`: verify every file installed by dpkg against the package database."""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Set, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import HashRequest, HashResult, hash_files
from fsaudit.model import Finding
from fsaudit.target import NotRegularFile, Target, file_kind
from fsaudit_checks.debian import classify, debfile, dpkg_db
from fsaudit_checks.debian.dpkg_db import Damage, Package

# At most this many content differences are compared with .deb files from the apt cache (each
# costs a decompression); the rest are still reported, without a classification.
MAX_CLASSIFIED = 2000
SAMPLE = 20
_COUNTERS = (
    "packages",
    "packages_verified",
    "files_verified",
    "conffiles_verified",
    "files_unverified",
    "unreadable",
    "excluded",
    "bytes_hashed",
    "files_hashed",
    "shared_files",
    "directories_verified",
    "symlinks_verified",
    "journal_entries",
)


@dataclass
class _Owner:
    """One package being verified, with what the checker learns about it on the way."""

    package: Package
    has_md5sums: bool
    install_time: float | None
    unverified: List[bytes] = field(default_factory=list)
    damaged: List[Tuple[bytes, bytes, dict]] = field(default_factory=list)


@dataclass
class _Item:
    """One thing to verify, in database order. `request` is set when this item hashes the file;
    items that share a file with an earlier one (same host path) reuse that result."""

    owner: _Owner
    kind: str  # "file", "conffile", "other", "end", "finding"
    path: bytes = b""
    location: bytes = b""
    expected: str = ""
    host: bytes = b""
    parent: bool = False
    request: HashRequest | None = None
    error: OSError | None = None
    finding: Finding | None = None


class DebianChecker(Checker):
    """Verify every file installed by dpkg (md5sums, conffiles) and the dpkg database itself."""

    name = "debian"
    options = (
        Option(
            "hashes_from_cache",
            "take the hashes of packages without md5sums from their .deb in /var/cache/apt/archives",
            kind=bool,
            default=False,
        ),
        Option(
            "classify",
            "compare damaged files with the .deb files in the apt cache to classify the damage",
            kind=bool,
            default=True,
        ),
    )
    codes = {
        "missing": "a file installed by a package is gone",
        "content-differs": "a file's content differs from the packaged file (details.classification "
        "says how: truncated, zero-filled, older-version, random, empty, unknown)",
        "wrong-type": "a directory, FIFO, device, socket or symlink stands where the package installed "
        "a regular file (or a non-directory where it installed a directory)",
        "unreadable": "a packaged file could not be read (I/O error, permission): it was not verified",
        "conffile-changed": "a configuration file differs from the packaged one (the administrator may "
        "have edited it; details say whether it changed after installation)",
        "conffile-missing": "a configuration file of a package is gone",
        "directory-missing": "a directory the package installed is gone",
        "symlink-missing": "a listed path that is no regular file (a symlink or an empty directory) is gone",
        "no-md5sums": "the package has no md5sums file: its files' content was not verified",
        "md5sums-incomplete": "regular files of the package have no checksum (a truncated md5sums file): "
        "they were not verified",
        "database-damaged": "a dpkg database file (status, updates/, info/*.list, info/*.md5sums, "
        "diversions) is malformed or inconsistent; everything readable was still verified",
        "package-unsettled": "dpkg did not finish installing or configuring the package",
    }

    def applies(self, target: Target) -> bool:
        if not target.exists(dpkg_db.STATUS, follow=True):
            raise Skip("no dpkg database (/var/lib/dpkg/status)")
        return True

    def run(self, target: Target) -> Iterator[Finding]:
        yield from _Audit(self, target).run()


def _advice(package: Package) -> str:
    name = package.qualified
    if not package.version:
        return f"reinstall the package {name} (apt-get install --reinstall {name})"
    return f"reinstall the package {name} (apt-get install --reinstall {name}={package.version})"


class _Audit:
    """One run of the checker over one target."""

    def __init__(self, checker: DebianChecker, target: Target):
        self.checker = checker
        self.target = target
        self.settings = checker.settings
        # Host path -> (digest, size, mtime, error): a file listed twice is read once.
        self.hashed: Dict[bytes, tuple] = {}
        self.directories_ok: Set[bytes] = set()
        self.classified = 0
        self.cache = classify.AptCache(target)

    # -- helpers ---------------------------------------------------------------------------------

    def count(self, key: str, amount: int = 1) -> None:
        self.checker.count(key, amount)

    def finding(
        self, code, severity, message, owner: _Owner | None = None, path=None, details=None, advice=""
    ):
        package = owner.package if owner else None
        full = dict(package.details()) if package else {}
        full.update(details or {})
        return self.checker.finding(
            code,
            severity,
            message,
            path=path,
            subject=package.subject if package else None,
            details=full,
            advice=advice or (_advice(package) if package else ""),
        )

    def damage_finding(self, damage: Damage, owner: _Owner | None = None, advice: str = "") -> Finding:
        where = f" (line {damage.line})" if damage.line else ""
        times = f", {damage.count} times" if damage.count > 1 else ""
        details = {"file": damage.path, "problem": damage.problem}
        if damage.line:
            details["line"] = damage.line
        if damage.count > 1:
            details["count"] = damage.count
        if not advice and owner is None:
            advice = (
                "the dpkg database is damaged: compare /var/lib/dpkg/status with the daily copies in "
                "/var/backups (dpkg.status.*) and restore the newest good one"
            )
        return self.finding(
            "database-damaged",
            "critical",
            f"{os.fsdecode(damage.path)}: {damage.problem}{where}{times}",
            owner=owner,
            path=damage.path,
            details=details,
            advice=advice,
        )

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Iterator[Finding]:
        target = self.target
        try:
            packages, damage, applied = dpkg_db.read_status(target)
        except OSError as error:
            yield self.finding(
                "database-damaged",
                "critical",
                f"cannot read the dpkg status file: {error.strerror or error}",
                path=dpkg_db.STATUS,
                advice="restore /var/lib/dpkg/status from /var/backups/dpkg.status.0",
            )
            self.checker.incomplete("the dpkg status file could not be read: no package was verified")
            return
        # Every counter is shown, zeros too: "0 unreadable" is a statement, a missing key is not.
        for key in _COUNTERS:
            self.count(key, 0)
        self.count("journal_entries", applied)
        for item in damage:
            yield self.damage_finding(item)
        self.diversions, damage = dpkg_db.read_diversions(target)
        for item in damage:
            yield self.damage_finding(item)
        self.filter = dpkg_db.read_path_filter(target)
        self.count("packages", len(packages))
        installed = sorted(
            (p for p in packages.values() if p.state in dpkg_db.UNPACKED_STATES),
            key=lambda p: (p.name, p.architecture),
        )
        orphans = self._orphan_lists(packages)
        for package in orphans:
            yield self.finding(
                "database-damaged",
                "critical",
                f"info/{package.name}.list exists but the status file has no installed package "
                f"{package.name}: the status file may have lost its entry (its files are verified "
                "with an unknown version)",
                path=dpkg_db.INFO + b"/" + os.fsencode(package.name) + b".list",
                details={"package": package.name, "version": "", "architecture": package.architecture},
                advice="restore /var/lib/dpkg/status from /var/backups/dpkg.status.0, then reinstall "
                f"the package {package.name}",
            )
        everything = installed + orphans
        self.checker.context.progress.start("debian: verifying packages", total=len(everything))
        try:
            yield from self._verify(everything)
        finally:
            self.checker.context.progress.stop()
        self._summarise()

    def _orphan_lists(self, packages: Dict[Tuple[str, str], Package]) -> List[Package]:
        known = set()
        for package in packages.values():
            known.add(package.name)
            known.add(f"{package.name}:{package.architecture}")
        orphans = []
        for base in sorted(dpkg_db.list_owners(self.target)):
            if base in known:
                continue
            name, _, arch = base.partition(":")
            orphans.append(Package(name=name, architecture=arch, status="unknown ok unknown"))
        return orphans

    def _summarise(self) -> None:
        stats = self.checker.stats
        not_verified = stats.get("files_unverified", 0) + stats.get("unreadable", 0)
        if not_verified:
            self.checker.incomplete(f"{not_verified} packaged files could not be verified")
        if stats.get("packages_without_list", 0):
            self.checker.incomplete(
                f"{stats['packages_without_list']} packages have no file list: not verified"
            )

    # -- producing the work in database order ------------------------------------------------

    def _verify(self, packages: List[Package]) -> Iterator[Finding]:
        order: deque = deque()
        results = hash_files(
            self.target, self._requests(packages, order), self.checker.context, self.checker.stats
        )
        for result in results:
            while True:
                item = order.popleft()
                if item.request is result.request:
                    self.hashed[item.host] = (result.digest, result.size, result.mtime, result.error)
                    yield from self._file(item, result)
                    break
                yield from self._process(item)
        while order:
            yield from self._process(order.popleft())

    def _requests(self, packages: List[Package], order: deque) -> Iterator[HashRequest]:
        requested: Set[bytes] = set()
        for package in packages:
            for item in self._items(package):
                if item.kind in ("file", "conffile") and item.error is None:
                    if item.host not in requested:
                        requested.add(item.host)
                        item.request = HashRequest(
                            item.location, "md5", key=item.host, follow=False, host=item.host
                        )
                        order.append(item)
                        yield item.request
                        continue
                    self.count("shared_files")
                order.append(item)

    def _items(self, package: Package) -> Iterator[_Item]:
        """Everything to verify for one package, ending with an "end" item."""
        target = self.target
        owner = _Owner(package, has_md5sums=False, install_time=None)
        if package.state not in dpkg_db.SETTLED_STATES and package.state != "unknown":
            yield _Item(owner, "finding", finding=self._unsettled(owner))
        list_path = dpkg_db.info_path(target, package, "list")
        if list_path is None:
            self.count("packages_without_list")
            yield _Item(owner, "finding", finding=self._no_list(owner))
            yield _Item(owner, "end")
            return
        try:
            owner.install_time = target.lstat(list_path).st_mtime
            listed, damage = dpkg_db.read_list(target, list_path)
        except OSError as error:
            self.count("packages_without_list")
            yield _Item(owner, "finding", finding=self._no_list(owner, error))
            yield _Item(owner, "end")
            return
        for item in damage:
            yield _Item(owner, "finding", finding=self.damage_finding(item, owner))
        sums, from_cache = yield from self._sums(owner)
        owner.has_md5sums = sums is not None
        sums = sums or {}
        conffiles = {c.path: c for c in package.conffiles if not c.obsolete and c.md5 != "newconffile"}
        # Obsolete conffiles and ones dpkg has not configured yet have no hash to compare with.
        unchecked_conffiles = {c.path for c in package.conffiles} - set(conffiles)
        listed_set = set(listed)
        parents = {path.rsplit(b"/", 1)[0] or b"/" for path in listed}
        extra = [p for p in sums if p not in listed_set and p not in conffiles]
        unlisted = [p for p in extra if not self.filter.excluded(p)]
        self.count("excluded", len(extra) - len(unlisted))
        if unlisted and not from_cache:
            yield _Item(owner, "finding", finding=self._unlisted(owner, unlisted))
        for path in listed + unlisted:
            if path in conffiles:
                yield self._file_item(owner, "conffile", path, conffiles[path].md5)
            elif path in sums:
                yield self._file_item(owner, "file", path, sums[path])
            elif path in unchecked_conffiles:
                continue
            else:
                location = dpkg_db.diverted_location(path, package.name, self.diversions)
                yield _Item(owner, "other", path, location, parent=path in parents)
        for path, conffile in conffiles.items():
            if path not in listed_set:
                yield self._file_item(owner, "conffile", path, conffile.md5)
        yield _Item(owner, "end")

    def _sums(self, owner: _Owner):
        """(path -> md5 or None, whether it came from the apt cache); yields findings on the way."""
        package = owner.package
        path = dpkg_db.info_path(self.target, package, "md5sums")
        if path is not None:
            try:
                sums, damage = dpkg_db.read_md5sums(self.target, path)
            except OSError as error:
                damage, sums = [Damage(path, f"cannot read it: {error.strerror or error}")], None
            for item in damage:
                yield _Item(owner, "finding", finding=self.damage_finding(item, owner))
            if sums is not None:
                return sums, False
        if self.settings["hashes_from_cache"]:
            sums, reason = self._sums_from_cache(package)
            if sums is not None:
                self.count("packages_hashed_from_cache")
                return sums, True
        else:
            reason = "set debian.hashes_from_cache=true to take them from a .deb in /var/cache/apt/archives"
        self.count("packages_without_md5sums")
        yield _Item(
            owner,
            "finding",
            finding=self.finding(
                "no-md5sums",
                "warning",
                f"package {package.name} has no md5sums: the content of its files was not verified "
                f"(only that they exist; {reason})",
                owner=owner,
                advice=_advice(package) + " to restore its md5sums",
            ),
        )
        return None, False

    def _sums_from_cache(self, package: Package):
        deb = self.cache.deb(package)
        if deb is None:
            return None, "no .deb of this version in /var/cache/apt/archives"
        try:
            members = debfile.md5sums(self.target, deb)
        except (debfile.DebError, OSError) as error:
            return None, f"its .deb in the apt cache cannot be read: {error}"
        return {path: md5 for path, (kind, md5) in members.items() if kind == "file" and md5}, None

    def _file_item(self, owner: _Owner, kind: str, path: bytes, expected: str) -> _Item:
        location = dpkg_db.diverted_location(path, owner.package.name, self.diversions)
        item = _Item(owner, kind, path, location, expected=expected)
        try:
            item.host = self.target.resolve(location, follow=False)
        except OSError as error:
            item.error = error
        return item

    # -- findings for the items --------------------------------------------------------------

    def _process(self, item: _Item) -> Iterator[Finding]:
        if item.kind == "finding":
            yield item.finding
        elif item.kind in ("file", "conffile"):
            if item.error is not None:
                yield from self._file(item, HashResult(HashRequest(item.location), error=item.error))
            else:
                digest, size, mtime, error = self.hashed[item.host]
                yield from self._file(
                    item, HashResult(HashRequest(item.location), digest, size, mtime, error)
                )
        elif item.kind == "other":
            yield from self._other(item)
        elif item.kind == "end":
            yield from self._end(item.owner)

    def _file(self, item: _Item, result: HashResult) -> Iterator[Finding]:
        owner = item.owner
        if result.error is None:
            stats = self.checker.stats
            if item.request is not None:
                stats["bytes_hashed"] = stats.get("bytes_hashed", 0) + (result.size or 0)
                stats["files_hashed"] = stats.get("files_hashed", 0) + 1
            self.checker.context.verified.add(item.location)
            key = "conffiles_verified" if item.kind == "conffile" else "files_verified"
            stats[key] = stats.get(key, 0) + 1
            if result.digest == item.expected:
                return
        details = {"expected_md5": item.expected}
        if item.location != item.path:
            details["diverted_to"] = item.location
        if result.error is not None:
            yield from self._file_error(item, result.error, details)
            return
        details.update(actual_md5=result.digest, size=result.size, mtime=_iso(result.mtime))
        if item.kind == "conffile":
            yield self._conffile_changed(item, result, details)
            return
        if not self.settings["classify"]:
            yield self._differs(owner, item.location, details)
        elif self.classified < MAX_CLASSIFIED and owner.package.version:
            # Classified when the package is done, with its .deb files read once.
            self.classified += 1
            owner.damaged.append((item.path, item.location, details))
        else:
            details.update(self.cache.evidence(item.location))
            yield self._differs(owner, item.location, details)

    def _differs(self, owner: _Owner, location: bytes, details: dict) -> Finding:
        classification = details.get("classification")
        if classification == "older-version":
            message = f"content matches the older version {details['matches_version']}: a lost update"
        elif classification in ("truncated", "zero-filled", "empty"):
            message = f"content differs from the packaged file ({classification})"
        else:
            message = "content differs from the packaged file"
        return self.finding(
            "content-differs", "critical", message, owner=owner, path=location, details=details
        )

    def _file_error(self, item: _Item, error: OSError, details: dict) -> Iterator[Finding]:
        owner = item.owner
        conffile = item.kind == "conffile"
        if isinstance(error, NotRegularFile) or error.errno == errno.ELOOP:
            kind = self._kind_at(item.location)
            if kind is not None:
                details["found"] = kind
                yield self.finding(
                    "wrong-type",
                    "critical",
                    f"a {kind} stands where the package installed a regular file",
                    owner=owner,
                    path=item.location,
                    details=details,
                )
                return
            details["reason"] = "a symbolic link loop on the way"
        if isinstance(error, (FileNotFoundError, NotADirectoryError)) or "reason" in details:
            if self.filter.excluded(item.path):
                self.count("excluded")
                return
            code, severity, what = (
                ("conffile-missing", "warning", "configuration file")
                if conffile
                else ("missing", "critical", "file")
            )
            yield self.finding(
                code,
                severity,
                f"the packaged {what} is gone",
                owner=owner,
                path=item.location,
                details=details,
            )
            return
        self.count("unreadable")
        details["error"] = error.strerror or str(error)
        details["errno"] = errno.errorcode.get(error.errno or 0, "")
        yield self.finding(
            "unreadable",
            "warning",
            f"cannot read the file: {details['error']}; it was not verified",
            owner=owner,
            path=item.location,
            details=details,
            advice="check the disk and the file's permissions, then run the audit again (as root)",
        )

    def _kind_at(self, location: bytes) -> str | None:
        try:
            mode = self.target.lstat(location).st_mode
        except OSError:
            return None
        return None if stat.S_ISREG(mode) else file_kind(mode)

    def _conffile_changed(self, item: _Item, result: HashResult, details: dict) -> Finding:
        install_time = item.owner.install_time
        details["installed"] = _iso(install_time)
        if install_time is not None and result.mtime is not None and result.mtime > install_time + 1:
            details["changed_after_install"] = True
            message = (
                "configuration file changed after the package was installed (an edit by the administrator?)"
            )
        else:
            details["changed_after_install"] = False
            message = (
                "configuration file differs from the packaged one although it was not modified after "
                "installation: not an ordinary edit, possibly damage"
            )
        name = item.owner.package.qualified
        return self.finding(
            "conffile-changed",
            "warning",
            message,
            owner=item.owner,
            path=item.location,
            details=details,
            advice=f"if nobody edited it, restore it from backup or from the package ({name}): "
            f"apt-get download {name}; dpkg-deb -x the .deb and compare",
        )

    def _other(self, item: _Item) -> Iterator[Finding]:
        """A listed path with no checksum: a directory, a symlink, an empty directory, or a
        regular file the md5sums file does not cover."""
        owner = item.owner
        try:
            host = self.target.resolve(item.location, follow=item.parent)
            if item.parent and host in self.directories_ok:
                return
            st = os.lstat(host)
        except OSError as error:
            if error.errno == errno.ELOOP:
                yield self.finding(
                    "wrong-type",
                    "critical",
                    "a symbolic link loop stands where the package installed this path",
                    owner=owner,
                    path=item.location,
                    details={"found": "symlink loop", "expected": "directory" if item.parent else "symlink"},
                )
                return
            if isinstance(error, (FileNotFoundError, NotADirectoryError)):
                if self.filter.excluded(item.path):
                    self.count("excluded")
                    return
                yield self._other_missing(item)
                return
            self.count("unreadable")
            yield self.finding(
                "unreadable",
                "warning",
                f"cannot look at the listed path: {error.strerror or error}",
                owner=owner,
                path=item.location,
                details={"error": error.strerror or str(error)},
            )
            return
        if item.parent:
            if stat.S_ISDIR(st.st_mode):
                self.directories_ok.add(host)
                self.count("directories_verified")
                return
            yield self.finding(
                "wrong-type",
                "critical",
                f"a {file_kind(st.st_mode)} stands where the package installed a directory",
                owner=owner,
                path=item.location,
                details={"found": file_kind(st.st_mode), "expected": "directory"},
            )
            return
        if stat.S_ISREG(st.st_mode):
            self.count("files_unverified")
            if len(owner.unverified) < SAMPLE:
                owner.unverified.append(item.location)
            else:
                owner.unverified.append(b"")
        elif stat.S_ISLNK(st.st_mode):
            self.count("symlinks_verified")
        elif stat.S_ISDIR(st.st_mode):
            self.count("directories_verified")

    def _other_missing(self, item: _Item) -> Finding:
        owner = item.owner
        if not owner.has_md5sums:
            return self.finding(
                "missing", "critical", "the packaged file is gone", owner=owner, path=item.location
            )
        if item.parent:
            return self.finding(
                "directory-missing",
                "critical",
                "the packaged directory is gone",
                owner=owner,
                path=item.location,
            )
        return self.finding(
            "symlink-missing",
            "critical",
            "the packaged symlink (or empty directory) is gone",
            owner=owner,
            path=item.location,
        )

    def _end(self, owner: _Owner) -> Iterator[Finding]:
        self.count("packages_verified")
        self.checker.context.progress.advance(1)
        if owner.unverified and owner.has_md5sums:
            sample = [p for p in owner.unverified if p][:SAMPLE]
            yield self.finding(
                "md5sums-incomplete",
                "warning",
                f"{len(owner.unverified)} regular files of the package have no checksum in its md5sums "
                "file (it may be truncated): they were not verified",
                owner=owner,
                details={"count": len(owner.unverified), "sample": sample},
                advice=_advice(owner.package) + " to restore its md5sums",
            )
        if owner.damaged:
            yield from self._classify(owner)

    # -- package-level findings --------------------------------------------------------------

    def _unsettled(self, owner: _Owner) -> Finding:
        state = owner.package.state
        return self.finding(
            "package-unsettled",
            "warning",
            f"dpkg did not finish with this package (state {state}): some of its files may be "
            "missing or old for that reason",
            owner=owner,
            details={"state": state},
            advice=f"run dpkg --configure -a, then {_advice(owner.package)}",
        )

    def _no_list(self, owner: _Owner, error: OSError | None = None) -> Finding:
        why = f"cannot be read ({error.strerror or error})" if error else "is missing"
        return self.finding(
            "database-damaged",
            "critical",
            f"the file list of package {owner.package.name} (info/*.list) {why}: its files were not verified",
            owner=owner,
            path=dpkg_db.INFO + b"/" + os.fsencode(owner.package.info_names()[-1]) + b".list",
        )

    def _unlisted(self, owner: _Owner, unlisted: List[bytes]) -> Finding:
        return self.finding(
            "database-damaged",
            "critical",
            f"{len(unlisted)} paths in the package's md5sums are missing from its file list (info/*.list "
            "may be truncated); they were still verified",
            owner=owner,
            details={"count": len(unlisted), "sample": unlisted[:SAMPLE]},
        )

    # -- classification of content differences -----------------------------------------------

    def _classify(self, owner: _Owner) -> Iterator[Finding]:
        wanted = {path: (location, details) for path, location, details in owner.damaged}
        self.cache.classify(owner.package, wanted)
        for location, details in wanted.values():
            yield self._differs(owner, location, details)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
