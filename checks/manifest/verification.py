"""One run of a manifest checker: the packages' entries turned into hash requests for the shared
engine, in database order, and every result (or missing, unreadable or foreign thing on the disk)
judged into a Finding."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Set

from fsaudit import outcomes
from fsaudit.hashing import HashRequest, HashResult, hash_files, start_workers
from fsaudit.model import Finding
from fsaudit.target import NotRegularFile, Target, file_kind
from fsaudit_checks.manifest.entries import (
    DIRECTORY,
    FILE,
    FILE_OR_SYMLINK,
    SPECIAL,
    SYMLINK,
    Damage,
    Entry,
    Package,
    digest_matches,
    iso,
)

MAX_LINK = 4096
# Directories already seen intact (many packages list /usr/bin): remembered up to this many.
DIRECTORY_CACHE = 200_000
_PERMISSION = (errno.EACCES, errno.EPERM)


@dataclass
class _Item:
    """One thing to judge, in database order; `request` is set for files the engine hashes."""

    package: Package
    kind: str
    entry: Entry | None = None
    finding: Finding | None = None
    request: HashRequest | None = None
    error: OSError | None = None


class Verification:
    """One run of a manifest checker over one target."""

    _COUNTERS = (
        "packages",
        "packages_verified",
        "files_verified",
        "conffiles_verified",
        "directories_verified",
        "symlinks_verified",
        "special_files_verified",
        "files_unreadable",
        "not_checked_permission",
        "bytes_hashed",
        "mtime_differs",
    )

    def __init__(self, checker, target: Target):
        self.checker = checker
        self.target = target
        self.window = checker.context.window
        self.directories_ok: Set[bytes] = set()
        self.package_total = 0

    # -- findings ------------------------------------------------------------------------------

    def finding(self, code, severity, message, package: Package | None, path=None, details=None, advice=None):
        full = package.details() if package else {}
        full.update(details or {})
        if advice is None:
            advice = self.checker.advice(package) if package else self.checker.database_advice
        return self.checker.finding(
            code,
            severity,
            message,
            path=path,
            subject=package.subject if package else None,
            details=full,
            advice=advice,
        )

    def damage(self, damage: Damage, package: Package | None = None) -> Finding:
        where = f" (line {damage.line})" if damage.line else ""
        times = f", {damage.count} times" if damage.count > 1 else ""
        details: Dict[str, Any] = {"file": damage.path, "problem": damage.problem}
        if damage.line:
            details["line"] = damage.line
        if damage.count > 1:
            details["count"] = damage.count
        advice = self.checker.database_advice
        if package is not None:
            advice = f"{advice}; then {self.checker.advice(package)}"
        return self.finding(
            "database-damaged",
            "critical",
            f"{os.fsdecode(damage.path)}: {damage.problem}{where}{times}",
            package,
            path=damage.path,
            details=details,
            advice=advice,
        )

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Iterator[Finding]:
        for key in self._COUNTERS:
            self.checker.count(key, 0)
        progress = self.checker.context.progress
        total = self.checker.package_count(self.target)
        progress.start(f"{self.checker.name}: verifying packages", total=total)
        if total != 0:  # None: not known in advance
            start_workers(self.checker.context)  # the worker processes start while the manifests are read
        try:
            yield from self._verify()
        finally:
            progress.stop()
        self._summarise()

    def _summarise(self) -> None:
        stats = self.checker.stats
        if stats.get("files_unreadable"):
            self.checker.incomplete(f"{stats['files_unreadable']:,} packaged files could not be read")
        denied = stats.get("not_checked_permission", 0)
        if denied:
            self.checker.incomplete(
                f"{denied:,} files not checked: permission denied (run as root to check them)"
            )
        if stats.get("files_unverified"):
            self.checker.incomplete(
                f"{stats['files_unverified']:,} packaged files have no checksum in the database: "
                "only their existence was verified"
            )

    def _verify(self) -> Iterator[Finding]:
        order: deque = deque()
        requests = self._requests(order)
        for result in hash_files(self.target, requests, self.checker.context, self.checker.stats):
            while True:
                item = order.popleft()
                if item.request is result.request:
                    yield from self._file(item, result)
                    break
                yield from self._process(item)
        while order:
            yield from self._process(order.popleft())

    def _requests(self, order: deque) -> Iterator[HashRequest]:
        only = set(self.checker.settings.get("packages") or ())
        for thing in self.checker.packages(self.target):
            if isinstance(thing, Damage):
                order.append(_Item(None, "finding", finding=self.damage(thing)))
                continue
            if only and thing.name not in only:
                continue
            self.checker.count("packages")
            for item in self._items(thing):
                order.append(item)
                if item.request is not None:
                    yield item.request

    def _items(self, package: Package) -> Iterator[_Item]:
        for entry in package.entries:
            if isinstance(entry, Damage):
                yield _Item(package, "finding", finding=self.damage(entry, package))
                continue
            if entry.kind == FILE or entry.kind == FILE_OR_SYMLINK:
                yield self._file_item(package, entry)
            else:
                yield _Item(package, entry.kind, entry)
        yield _Item(package, "end")

    def _file_item(self, package: Package, entry: Entry) -> _Item:
        item = _Item(package, FILE, entry)
        if entry.digest is None or not entry.algorithm:
            # No checksum recorded: only whether it exists can be said.
            item.kind = "unhashed"
            return item
        try:
            host = self.target.resolve(entry.path, follow=False)
        except OSError as error:
            item.error = error
            return item
        item.request = HashRequest(
            entry.path, entry.algorithm, expected_size=entry.size, key=entry.path, follow=False, host=host
        )
        return item

    # -- judging ---------------------------------------------------------------------------------

    def _process(self, item: _Item) -> Iterator[Finding]:
        if item.kind == "finding":
            yield item.finding
        elif item.kind == FILE:
            yield from self._file(item, HashResult(HashRequest(item.entry.path), error=item.error))
        elif item.kind == "unhashed":
            yield from self._unhashed(item)
        elif item.kind == DIRECTORY:
            yield from self._directory(item)
        elif item.kind == SYMLINK:
            yield from self._symlink(item)
        elif item.kind == SPECIAL:
            yield from self._special(item)
        elif item.kind == "end":
            self.checker.count("packages_verified")
            self.checker.context.progress.advance(1)

    def _file(self, item: _Item, result: HashResult) -> Iterator[Finding]:
        entry = item.entry
        error = result.error
        if error is not None:
            if entry.kind == FILE_OR_SYMLINK and (error.errno == errno.ELOOP or _is_symlink(error)):
                yield from self._symlink(item, by_digest=True)
                return
            yield from self._unread(item, error)
            return
        self.checker.context.verified.add(entry.path)
        if result.digest is not None:
            self.checker.count("bytes_hashed", result.size or 0)
        self.checker.count("conffiles_verified" if entry.conffile else "files_verified")
        if result.anomaly is not None:
            what = "configuration file" if entry.conffile else "file"
            code, message, details = outcomes.anomaly(result, what)
            details["mtime"] = iso(result.mtime)
            yield self.finding(code, "critical", message, item.package, path=entry.path, details=details)
            return
        if not result.size_differs and digest_matches(result.digest, entry.digest):
            if entry.mtime is not None and result.mtime is not None and int(result.mtime) != entry.mtime:
                self.checker.count("mtime_differs")
            yield from self._metadata(item, getattr(result, "st", None))
            return
        yield self._differs(item, result)

    def _differs(self, item: _Item, result: HashResult) -> Finding:
        entry, package = item.entry, item.package
        algorithm = entry.algorithm.replace("-", "")
        details: Dict[str, Any] = {
            f"expected_{algorithm}": entry.digest,
            f"actual_{algorithm}": result.digest,
            "expected_size": entry.size,
            "size": result.size,
            "mtime": iso(result.mtime),
        }
        if entry.mtime is not None:
            details["recorded_mtime"] = iso(entry.mtime)
        if package.installed is not None:
            details["installed"] = iso(package.installed)
        if result.size_differs:
            details["size_differs"] = True
        reference = package.installed if package.installed is not None else entry.mtime
        after = outcomes.changed_after(result.mtime, reference)
        if entry.conffile:
            details["changed_after_install"] = after
            message = (
                "configuration file changed after the package was installed (an edit by the administrator?)"
                if after
                else "configuration file differs from the packaged one although it was not modified after "
                "installation: not an ordinary edit, possibly damage"
            )
            return self.finding(
                "conffile-changed",
                "warning",
                message,
                package,
                path=entry.path,
                details=details,
                advice=f"if nobody edited it, restore it from backup or from the package; "
                f"{self.checker.advice(package)}",
            )
        in_window = after and self.window is not None and self.window.contains(result.mtime)
        if after and not in_window:
            return self.finding(
                "modified-after-install",
                "warning",
                f"content differs from the packaged file; it was written on {iso(result.mtime)}, after the "
                "package was installed: a local change, or damage",
                package,
                path=entry.path,
                details=details,
                advice=f"if nobody changed it on purpose, {self.checker.advice(package)}",
            )
        if in_window:
            details["modified_in_window"] = True
            message = "content differs from the packaged file; it was written during the suspect window"
        elif result.size_differs:
            message = "content differs from the packaged file (its size differs)"
        else:
            message = "content differs from the packaged file"
        return self.finding("content-differs", "critical", message, package, path=entry.path, details=details)

    def _unread(self, item: _Item, error: OSError) -> Iterator[Finding]:
        entry, package = item.entry, item.package
        if isinstance(error, NotRegularFile) or error.errno == errno.ELOOP:
            found = self._kind_at(entry.path) or (
                error.kind if isinstance(error, NotRegularFile) else "symlink loop"
            )
            yield self.finding(
                "wrong-type",
                "critical",
                f"a {found} stands where the package installed a regular file",
                package,
                path=entry.path,
                details={"found": found, "expected": "regular file"},
            )
            return
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            if self.checker.excluded(entry.path):
                self.checker.count("excluded")
                return
            if entry.conffile:
                yield self.finding(
                    "conffile-missing",
                    "warning",
                    "the packaged configuration file is gone",
                    package,
                    path=entry.path,
                    advice=f"if nobody removed it on purpose, {self.checker.advice(package)}",
                )
            else:
                yield self.finding(
                    "missing", "critical", "the packaged file is gone", package, path=entry.path
                )
            return
        yield from self._error(item, error)

    def _error(self, item: _Item, error: OSError) -> Iterator[Finding]:
        if error.errno in _PERMISSION:
            self.checker.count("not_checked_permission")
            return
        self.checker.count("files_unreadable")
        yield self.finding(
            "unreadable",
            "warning",
            f"cannot read it: {error.strerror or error}; it was not verified",
            item.package,
            path=item.entry.path,
            details={
                "error": error.strerror or str(error),
                "errno": errno.errorcode.get(error.errno or 0, ""),
            },
            advice="check the disk; restore the file from backup or reinstall the package if it stays "
            "unreadable",
        )

    def _kind_at(self, path: bytes) -> str | None:
        try:
            mode = self.target.lstat(path).st_mode
        except OSError:
            return None
        return None if stat.S_ISREG(mode) else file_kind(mode)

    def _metadata(self, item: _Item, st: os.stat_result | None) -> Iterator[Finding]:
        entry = item.entry
        if entry.mode is None and entry.uid is None and entry.gid is None:
            return
        if st is None:
            try:
                st = self.target.lstat(entry.path)
            except OSError:
                return
        differences = {}
        if entry.mode is not None and stat.S_IMODE(st.st_mode) != entry.mode:
            differences["mode"] = (f"{entry.mode:04o}", f"{stat.S_IMODE(st.st_mode):04o}")
        if entry.uid is not None and st.st_uid != entry.uid:
            differences["uid"] = (entry.uid, st.st_uid)
        if entry.gid is not None and st.st_gid != entry.gid:
            differences["gid"] = (entry.gid, st.st_gid)
        if not differences:
            return
        details = {f"expected_{key}": value[0] for key, value in differences.items()}
        details.update({key: value[1] for key, value in differences.items()})
        yield self.finding(
            "metadata-differs",
            "warning",
            f"{', '.join(differences)} differ from the package; the content is intact",
            item.package,
            path=entry.path,
            details=details,
        )

    def _unhashed(self, item: _Item) -> Iterator[Finding]:
        try:
            st = self.target.lstat(item.entry.path)
        except OSError as error:
            yield from self._absent(item, error, "the packaged file is gone")
            return
        if stat.S_ISDIR(st.st_mode):
            found = file_kind(st.st_mode)
            yield self.finding(
                "wrong-type",
                "critical",
                f"a {found} stands where the package installed a file",
                item.package,
                path=item.entry.path,
                details={"found": found, "expected": "file"},
            )
            return
        self.checker.count("files_unverified")

    def _absent(self, item: _Item, error: OSError, message: str, code: str = "missing") -> Iterator[Finding]:
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            if self.checker.excluded(item.entry.path):
                self.checker.count("excluded")
                return
            yield self.finding(code, "critical", message, item.package, path=item.entry.path)
            return
        if error.errno == errno.ELOOP:
            yield self.finding(
                "wrong-type",
                "critical",
                "a symbolic link loop stands where the package installed this path",
                item.package,
                path=item.entry.path,
                details={"found": "symlink loop"},
            )
            return
        yield from self._error(item, error)

    def _directory(self, item: _Item) -> Iterator[Finding]:
        path = item.entry.path
        if path in self.directories_ok:
            return
        try:
            st = self.target.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                # A directory moved elsewhere and linked back (inside the root) is still there.
                st = self.target.stat(path)
        except OSError as error:
            yield from self._absent(item, error, "the packaged directory is gone", code="directory-missing")
            return
        if not stat.S_ISDIR(st.st_mode):
            found = file_kind(st.st_mode)
            yield self.finding(
                "wrong-type",
                "critical",
                f"a {found} stands where the package installed a directory",
                item.package,
                path=path,
                details={"found": found, "expected": "directory"},
            )
            return
        self.checker.count("directories_verified")
        if len(self.directories_ok) < DIRECTORY_CACHE:
            self.directories_ok.add(path)
        yield from self._metadata(item, st)

    def _symlink(self, item: _Item, by_digest: bool = False) -> Iterator[Finding]:
        entry = item.entry
        try:
            st = self.target.lstat(entry.path)
            if not stat.S_ISLNK(st.st_mode):
                raise NotRegularFile(entry.path, st.st_mode)
            if st.st_size > MAX_LINK:
                raise OSError(errno.ENAMETOOLONG, "the symlink's target is implausibly long")
            link = self.target.readlink(entry.path)
        except NotRegularFile as error:
            yield self.finding(
                "wrong-type",
                "critical",
                f"a {error.kind} stands where the package installed a symlink",
                item.package,
                path=entry.path,
                details={"found": error.kind, "expected": "symlink"},
            )
            return
        except OSError as error:
            yield from self._absent(item, error, "the packaged symlink is gone")
            return
        self.checker.context.verified.add(entry.path)
        self.checker.count("symlinks_verified")
        if by_digest:
            actual = hashlib.new(entry.algorithm, link).hexdigest()
            if digest_matches(actual, entry.digest or ""):
                return
            details = {f"expected_{entry.algorithm}_of_target": entry.digest, "target": link}
        else:
            if entry.link is None or link == entry.link:
                return
            details = {"expected_target": entry.link, "target": link}
        yield self.finding(
            "link-differs",
            "critical",
            "the packaged symlink points somewhere else",
            item.package,
            path=entry.path,
            details=details,
        )

    def _special(self, item: _Item) -> Iterator[Finding]:
        try:
            mode = self.target.lstat(item.entry.path).st_mode
        except OSError as error:
            yield from self._absent(item, error, "the packaged special file is gone")
            return
        expected = item.entry.special
        if (expected == "fifo" and not stat.S_ISFIFO(mode)) or (
            expected == "device" and not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode))
        ):
            found = file_kind(mode)
            yield self.finding(
                "wrong-type",
                "critical",
                f"a {found} stands where the package installed a {expected}",
                item.package,
                path=item.entry.path,
                details={"found": found, "expected": expected},
            )
            return
        self.checker.count("special_files_verified")


def _is_symlink(error: OSError) -> bool:
    return isinstance(error, NotRegularFile) and error.kind == "symlink"
