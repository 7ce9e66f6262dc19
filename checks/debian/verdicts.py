"""Judging what the debian checker found: each packaged path's hash result or file type, and what the
database itself shows, as plain problems (the checker turns them into Findings).

The file outcome (missing, wrong type, unreadable, content differs) is the one every file-verifying
checker shares (`fsaudit.outcomes`); what is particular to dpkg is decided here: conffiles, the
package's installation time, diversions and path filters, classification with the apt cache.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator, List, Set

from fsaudit import outcomes
from fsaudit.hashing import BatchResult, HashRequest, HashResult
from fsaudit.target import Target, file_kind
from fsaudit.window import Window
from fsaudit_checks.debian import dpkg_db
from fsaudit_checks.debian.classify import AptCache
from fsaudit_checks.debian.dpkg_db import Damage, Package
from fsaudit_checks.debian.placement import PathFilter
from fsaudit_checks.debian.plan import Item, Owner
from fsaudit_checks.debian.removals import Removals

# At most this many content differences are compared with .deb files from the apt cache (each
# costs a decompression); the rest are still reported, without a classification.
MAX_CLASSIFIED = 2000
SAMPLE = 20

STATUS_ADVICE = "restore /var/lib/dpkg/status from /var/backups/dpkg.status.0"


@dataclass
class Problem:
    """One verdict, before it becomes a Finding: `owner` gives the package, `advice` "" means
    "reinstall the package"."""

    code: str
    severity: str
    message: str
    owner: Owner | None = None
    path: bytes | None = None
    details: dict = field(default_factory=dict)
    advice: str = ""


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def reinstall_advice(package: Package, image: str | None) -> str:
    """What restores a package's files: apt inside the system, or `fsaudit repair` from the host when
    the system is an image mounted at `image` (apt run here would act on the host, not the image)."""
    name = package.qualified
    spec = f"{name}={package.version}" if package.version else name
    if image is None:
        return f"reinstall the package {name} (apt-get install --reinstall {spec})"
    return (
        f"reinstall the package {name} inside the VM (apt-get install --reinstall {spec}), or restore its "
        f"files from this host: fsaudit repair REPORT.json --root {image}"
    )


class Judge:
    """The verdicts of one run over one target."""

    def __init__(
        self,
        target: Target,
        path_filter: PathFilter,
        cache: AptCache,
        count: Callable[[str, int], None],
        verified: Set[bytes],
        window: Window | None = None,
        classify: bool = True,
    ):
        self.target = target
        self.filter = path_filter
        self.cache = cache
        self.count = count
        self.verified = verified
        self.window = window
        # Paths found gone are judged at the end: removed on the system, or lost by the disk.
        self.removals = Removals(target, window)
        self.classify = classify
        self.image = None if target.live else target.root_text
        self.directories_ok: Set[bytes] = set()
        self.classified = 0

    def advice(self, package: Package) -> str:
        return reinstall_advice(package, self.image)

    # -- regular files and conffiles -----------------------------------------------------------

    def batch(self, item: Item, result: BatchResult) -> Iterator[Problem]:
        """The files of a batch: those with the digest their package expects are counted, with nothing
        to say (what `file` does for them, without its machinery: 25,000 of them in the benchmark's
        audit); the others are judged one by one."""
        owner = item.owner
        request = item.request
        locations = request.paths
        others = result.others
        self.removals.note_all(locations, owner.install_time)
        matched = (
            [location for index, location in enumerate(locations) if index not in others]
            if others
            else locations
        )
        self.verified.update(matched)
        kinds, paths, expected = item.entries
        conffiles = kinds.count("conffile") - sum(1 for index in others if kinds[index] == "conffile")
        self.count("files_verified", len(matched) - conffiles)
        if conffiles:
            self.count("conffiles_verified", conffiles)
        self.count("files_hashed", len(matched))
        self.count("bytes_hashed", result.matched_bytes)
        for index in sorted(others):
            single = Item(
                owner, kinds[index], paths[index], locations[index], expected[index], request.hosts[index]
            )
            single.request = request
            yield from self.file(single, others[index])

    def _verified(self, item: Item, result: HashResult) -> None:
        if item.request is not None and result.digest is not None:
            self.count("bytes_hashed", result.size or 0)
            self.count("files_hashed", 1)
        self.verified.add(item.location)
        self.count("conffiles_verified" if item.kind == "conffile" else "files_verified", 1)

    def file(self, item: Item, result: HashResult) -> Iterator[Problem]:
        owner = item.owner
        self.removals.note(item.location, owner.install_time)
        verdict = outcomes.outcome(result, item.expected)
        if result.error is None:
            self._verified(item, result)
        if verdict == outcomes.OK:
            return
        details = {"expected_md5": item.expected}
        if item.location != item.path:
            details["diverted_to"] = item.location
        if verdict == outcomes.ANOMALY:
            what = "configuration file" if item.kind == "conffile" else "file"
            code, message, found = outcomes.anomaly(result, what)
            details.update(found, mtime=iso(result.mtime))
            yield Problem(code, "critical", message, owner, item.location, details)
            return
        if verdict != outcomes.CONTENT_DIFFERS:
            yield from self._file_error(item, verdict, result.error, details)
            return
        details.update(actual_md5=result.digest, size=result.size, mtime=iso(result.mtime))
        if item.kind == "conffile":
            yield self._conffile_changed(item, result, details)
            return
        details["installed"] = iso(owner.install_time)
        if outcomes.local_change(result.mtime, owner.install_time, self.window):
            yield self._modified(item, details)
            return
        if outcomes.changed_after(result.mtime, owner.install_time):
            details["modified_in_window"] = True
        if not self.classify:
            yield self.differs(owner, item.location, details)
        elif self.classified < MAX_CLASSIFIED and owner.package.version:
            # Classified when the package is done, with its .deb files read once.
            self.classified += 1
            owner.damaged.append((item.path, item.location, details))
        else:
            details.update(self.cache.evidence(item.location))
            yield self.differs(owner, item.location, details)

    def differs(self, owner: Owner, location: bytes, details: dict) -> Problem:
        classification = details.get("classification")
        if classification == "older-version":
            message = f"content matches the older version {details['matches_version']}: a lost update"
        elif classification in ("truncated", "zero-filled", "empty"):
            message = f"content differs from the packaged file ({classification})"
        else:
            message = "content differs from the packaged file"
        if details.get("modified_in_window"):
            message += ", and it was modified during the suspect window"
        return Problem("content-differs", "critical", message, owner, location, details)

    def _modified(self, item: Item, details: dict) -> Problem:
        return Problem(
            "modified-after-install",
            "warning",
            f"content differs from the packaged file; it was changed on {details['mtime']}, after the "
            f"package was installed on {details['installed']}: a change made on this system, not "
            "damage from lost writes",
            item.owner,
            item.location,
            details,
            advice="if this change was made on purpose (a local edit, an update outside the package "
            f"manager), there is nothing to do; otherwise {self.advice(item.owner.package)}",
        )

    def _file_error(self, item: Item, verdict: str, error: OSError, details: dict) -> Iterator[Problem]:
        owner = item.owner
        if verdict == outcomes.WRONG_TYPE:
            kind = self._kind_at(item.location)
            if kind is not None:
                details["found"] = kind
                yield Problem(
                    "wrong-type",
                    "critical",
                    f"a {kind} stands where the package installed a regular file",
                    owner,
                    item.location,
                    details,
                )
                return
            details["reason"] = "a symbolic link loop on the way"
            verdict = outcomes.MISSING
        if verdict == outcomes.MISSING:
            if self.filter.excluded(item.path):
                self.count("excluded", 1)
                return
            if item.kind == "conffile":
                yield Problem(
                    "conffile-missing",
                    "warning",
                    "the packaged configuration file is gone",
                    owner,
                    item.location,
                    details,
                )
            else:
                missing = Problem(
                    "missing", "critical", "the packaged file is gone", owner, item.location, details
                )
                self.removals.hold(missing, item.location, owner.install_time)
            return
        if isinstance(error, PermissionError):
            # Not damage: this user may not read it (outcomes' convention for every checker).
            self.count("not_checked_permission", 1)
            return
        self.count("unreadable", 1)
        details["error"] = error.strerror or str(error)
        details["errno"] = errno.errorcode.get(error.errno or 0, "")
        yield Problem(
            "unreadable",
            "warning",
            f"cannot read the file: {details['error']}; it was not verified",
            owner,
            item.location,
            details,
            advice="check the disk, then run the audit again; restore the file if it stays unreadable",
        )

    def _kind_at(self, location: bytes) -> str | None:
        try:
            mode = self.target.lstat(location).st_mode
        except OSError:
            return None
        return None if stat.S_ISREG(mode) else file_kind(mode)

    def _conffile_changed(self, item: Item, result: HashResult, details: dict) -> Problem:
        install_time = item.owner.install_time
        details["installed"] = iso(install_time)
        if outcomes.changed_after(result.mtime, install_time):
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
        return Problem(
            "conffile-changed",
            "warning",
            message,
            item.owner,
            item.location,
            details,
            advice=f"if nobody edited it, restore it from backup or from the package ({name}): "
            f"apt-get download {name}; dpkg-deb -x the .deb and compare",
        )

    # -- listed paths without a checksum ----------------------------------------------------------

    def other(self, item: Item) -> Iterator[Problem]:
        """A listed path with no checksum: a directory, a symlink, an empty directory, or a
        regular file the md5sums file does not cover."""
        owner = item.owner
        self.removals.note(item.location, owner.install_time)
        try:
            if item.parent:
                # A package's directories were walked to resolve its files: their mode is known.
                host, mode = self.target.directory_mode(item.location)
                if host in self.directories_ok:
                    return
                if stat.S_ISDIR(mode):
                    self.directories_ok.add(host)
                    self.count("directories_verified", 1)
                    return
            else:
                host = self.target.resolve(item.location, follow=False)
            st = os.lstat(host)
        except OSError as error:
            yield from self._other_error(item, error)
            return
        if item.parent:
            if stat.S_ISDIR(st.st_mode):
                self.directories_ok.add(host)
                self.count("directories_verified", 1)
                return
            yield Problem(
                "wrong-type",
                "critical",
                f"a {file_kind(st.st_mode)} stands where the package installed a directory",
                owner,
                item.location,
                {"found": file_kind(st.st_mode), "expected": "directory"},
            )
            return
        if stat.S_ISREG(st.st_mode):
            self.count("files_unverified", 1)
            owner.unverified.append(item.location if len(owner.unverified) < SAMPLE else b"")
        elif stat.S_ISLNK(st.st_mode):
            self.count("symlinks_verified", 1)
        elif stat.S_ISDIR(st.st_mode):
            self.count("directories_verified", 1)

    def _other_error(self, item: Item, error: OSError) -> Iterator[Problem]:
        owner = item.owner
        if error.errno == errno.ELOOP:
            yield Problem(
                "wrong-type",
                "critical",
                "a symbolic link loop stands where the package installed this path",
                owner,
                item.location,
                {"found": "symlink loop", "expected": "directory" if item.parent else "symlink"},
            )
        elif isinstance(error, (FileNotFoundError, NotADirectoryError)):
            if self.filter.excluded(item.path):
                self.count("excluded", 1)
            else:
                self.removals.hold(self._other_missing(item), item.location, owner.install_time)
        elif isinstance(error, PermissionError):
            self.count("not_checked_permission", 1)
        else:
            self.count("unreadable", 1)
            yield Problem(
                "unreadable",
                "warning",
                f"cannot look at the listed path: {error.strerror or error}",
                owner,
                item.location,
                {"error": error.strerror or str(error)},
            )

    def _other_missing(self, item: Item) -> Problem:
        owner = item.owner
        if not owner.has_md5sums:
            return Problem("missing", "critical", "the packaged file is gone", owner, item.location)
        if item.parent:
            return Problem(
                "directory-missing", "critical", "the packaged directory is gone", owner, item.location
            )
        return Problem(
            "symlink-missing",
            "critical",
            "the packaged symlink (or empty directory) is gone",
            owner,
            item.location,
        )

    # -- paths found gone, once every package was seen -------------------------------------------

    def finish(self) -> Iterator[Problem]:
        """The paths found gone: lost by the disk (as found), or removed by something on the system
        after installation (`modified-after-install`, a warning)."""
        for problem, removal in self.removals.judged():
            if removal is None:
                yield problem
                continue
            what = {"missing": "file", "directory-missing": "directory"}.get(problem.code, "symlink")
            details = {
                **problem.details,
                "directory": os.fsdecode(removal[0]),
                "directory_changed": iso(removal[1]),
                "removed": True,
                "found": problem.code,
                "installed": iso(problem.owner.install_time),
            }
            yield Problem(
                "modified-after-install",
                "warning",
                f"the packaged {what} is gone, and its directory {details['directory']} was changed on "
                f"{details['directory_changed']}, after the package was installed on "
                f"{details['installed']}, by no package installation: removed by something on this "
                "system, not lost by the disk",
                problem.owner,
                problem.path,
                details,
                advice="if it was removed on purpose (a tool that updates itself, a local clean-up), "
                f"there is nothing to do; otherwise {self.advice(problem.owner.package)}",
            )

    # -- the end of a package --------------------------------------------------------------------

    def end(self, owner: Owner) -> Iterator[Problem]:
        if not owner.not_checked:
            self.count("packages_verified", 1)
        if owner.unverified and owner.has_md5sums:
            sample = [p for p in owner.unverified if p][:SAMPLE]
            yield Problem(
                "md5sums-incomplete",
                "warning",
                f"{len(owner.unverified)} regular files of the package have no checksum in its md5sums "
                "file (it may be truncated): they were not verified",
                owner,
                details={"count": len(owner.unverified), "sample": sample},
                advice=self.advice(owner.package) + " to restore its md5sums",
            )
        if owner.damaged:
            wanted = {path: (location, details) for path, location, details in owner.damaged}
            self.cache.classify(owner.package, wanted)
            for location, details in wanted.values():
                yield self.differs(owner, location, details)

    # -- what the database shows -----------------------------------------------------------------

    def database_damage(self, damage: Damage, owner: Owner | None = None, advice: str = "") -> Problem:
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
        return Problem(
            "database-damaged",
            "critical",
            f"{os.fsdecode(damage.path)}: {damage.problem}{where}{times}",
            owner,
            damage.path,
            details,
            advice,
        )

    def status_unreadable(self, error: OSError) -> Problem:
        return Problem(
            "database-damaged",
            "critical",
            f"cannot read the dpkg status file: {error.strerror or error}",
            path=dpkg_db.STATUS,
            advice=STATUS_ADVICE,
        )

    def orphan(self, package: Package) -> Problem:
        return Problem(
            "database-damaged",
            "critical",
            f"info/{package.name}.list exists but the status file has no installed package "
            f"{package.name}: the status file may have lost its entry (its files are verified "
            "with an unknown version)",
            path=dpkg_db.INFO + b"/" + os.fsencode(package.name) + b".list",
            details={"package": package.name, "version": "", "architecture": package.architecture},
            advice=f"{STATUS_ADVICE}, then reinstall the package {package.name}",
        )

    def unsettled(self, owner: Owner) -> Problem:
        state = owner.package.state
        return Problem(
            "package-unsettled",
            "warning",
            f"dpkg did not finish with this package (state {state}): some of its files may be "
            "missing or old for that reason",
            owner,
            details={"state": state},
            advice=f"run dpkg --configure -a, then {self.advice(owner.package)}",
        )

    def no_list(self, owner: Owner, error: OSError | None = None) -> Problem:
        why = f"cannot be read ({error.strerror or error})" if error else "is missing"
        return Problem(
            "database-damaged",
            "critical",
            f"the file list of package {owner.package.name} (info/*.list) {why}: its files were not verified",
            owner,
            dpkg_db.INFO + b"/" + os.fsencode(owner.package.info_names()[-1]) + b".list",
        )

    def unlisted(self, owner: Owner, unlisted: List[bytes]) -> Problem:
        return Problem(
            "database-damaged",
            "critical",
            f"{len(unlisted)} paths in the package's md5sums are missing from its file list (info/*.list "
            "may be truncated); they were still verified",
            owner,
            details={"count": len(unlisted), "sample": unlisted[:SAMPLE]},
        )

    def no_md5sums(self, owner: Owner, reason: str) -> Problem:
        package = owner.package
        return Problem(
            "no-md5sums",
            "warning",
            f"package {package.name} has no md5sums: the content of its files was not verified "
            f"(only that they exist; {reason})",
            owner,
            advice=self.advice(package) + " to restore its md5sums",
        )


def result_of(item: Item, hashed: BatchResult | None) -> HashResult:
    """The hash result of an item that shares its file with an earlier one (`hashed`: the result of
    the batch that read it), or that failed to resolve."""
    request = HashRequest(item.location)
    if item.error is not None:
        return HashResult(request, error=item.error)
    index = hashed.request.hosts.index(item.host)
    other = hashed.others.get(index)
    if other is None:  # it has the digest that batch expected
        return HashResult(request, hashed.request.digests[index], hashed.sizes[index], hashed.mtimes[index])
    return HashResult(
        request, other.digest, other.size, other.mtime, other.error, holes=other.holes, anomaly=other.anomaly
    )
