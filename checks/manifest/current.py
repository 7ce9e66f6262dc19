"""What a packaged path is now, for repair: as packaged again, damaged, or changed in a way that may
be intended (a configuration file, a file written after the installation), judged against the
database's entry the same way the manifest checkers judge it."""

from __future__ import annotations

import errno
import hashlib
import stat
from typing import Tuple

from fsaudit.hashing import HashRequest, hash_one
from fsaudit.outcomes import local_change
from fsaudit.target import NotRegularFile, Target
from fsaudit.window import Window
from fsaudit_checks.manifest.entries import (
    DIRECTORY,
    FILE_OR_SYMLINK,
    SPECIAL,
    SYMLINK,
    Entry,
    Package,
    digest_matches,
    iso,
)

INTACT = "intact"
DAMAGED = "damaged"
CONFFILE = "conffile"
LOCAL_CHANGE = "local-change"
UNCHECKED = "unchecked"
_PERMISSION = (errno.EACCES, errno.EPERM)
MAX_LINK = 4096


class Judge:
    """Verdicts on the paths of one system, with the operator's choices."""

    def __init__(self, target: Target, allow_conffiles: bool, include_modified: bool, window: Window | None):
        self.target = target
        self.allow_conffiles = allow_conffiles
        self.include_modified = include_modified
        self.window = window

    def verdict(self, package: Package, entry: Entry) -> Tuple[str, str]:
        """(verdict, why) for the path of `entry` as it is now: INTACT, DAMAGED, CONFFILE or
        LOCAL_CHANGE (left alone unless asked), or UNCHECKED (it cannot be looked at here)."""
        if entry.kind == DIRECTORY:
            return self._directory(entry)
        if entry.kind == SYMLINK:
            return self._symlink(entry, by_digest=False)
        if entry.kind == SPECIAL:
            return self._special(entry)
        if not entry.digest or not entry.algorithm:
            return self._exists(entry)
        result = hash_one(self.target, HashRequest(entry.path, entry.algorithm, follow=False))
        error = result.error
        if error is not None:
            if entry.kind == FILE_OR_SYMLINK and _is_symlink(error):
                return self._symlink(entry, by_digest=True)
            if error.errno in _PERMISSION:
                return UNCHECKED, "cannot read it now (permission denied): run repair as root"
            if isinstance(error, (FileNotFoundError, NotADirectoryError)) and entry.conffile:
                return self._conffile()
            return DAMAGED, ""
        if digest_matches(result.digest, entry.digest) and not _metadata_differs(entry, result.st):
            return INTACT, ""
        if entry.conffile:
            return self._conffile()
        reference = package.installed if package.installed is not None else entry.mtime
        if (
            not self.include_modified
            and local_change(result.mtime, reference, self.window)
            and not digest_matches(result.digest, entry.digest)
        ):
            return LOCAL_CHANGE, (
                f"changed on the system on {iso(result.mtime)}, after the package was installed on "
                f"{iso(reference)}: --include-modified restores the packaged version"
            )
        return DAMAGED, ""

    def _conffile(self) -> Tuple[str, str]:
        if self.allow_conffiles:
            return DAMAGED, ""
        return CONFFILE, (
            "a configuration file, which its administrator may have changed or removed: --allow-conffiles "
            "replaces it with the packaged version (the current one is kept beside it)"
        )

    def _lstat(self, entry: Entry) -> Tuple[object, Tuple[str, str] | None]:
        try:
            return self.target.lstat(entry.path), None
        except (FileNotFoundError, NotADirectoryError):
            return None, (DAMAGED, "")
        except OSError as error:
            if error.errno in _PERMISSION:
                return None, (UNCHECKED, "cannot look at it now (permission denied): run repair as root")
            if error.errno == errno.ELOOP:
                return None, (DAMAGED, "")
            return None, (UNCHECKED, f"cannot look at it now: {error.strerror or error}")

    def _exists(self, entry: Entry) -> Tuple[str, str]:
        st, verdict = self._lstat(entry)
        if verdict is not None:
            return verdict
        return (DAMAGED, "") if stat.S_ISDIR(st.st_mode) else (INTACT, "")

    def _directory(self, entry: Entry) -> Tuple[str, str]:
        try:
            st = self.target.stat(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            return DAMAGED, ""
        except OSError as error:
            if error.errno in _PERMISSION:
                return UNCHECKED, "cannot look at it now (permission denied): run repair as root"
            return DAMAGED, ""
        if not stat.S_ISDIR(st.st_mode) or _metadata_differs(entry, st):
            return DAMAGED, ""
        return INTACT, ""

    def _symlink(self, entry: Entry, by_digest: bool) -> Tuple[str, str]:
        st, verdict = self._lstat(entry)
        if verdict is not None:
            return verdict
        if not stat.S_ISLNK(st.st_mode) or st.st_size > MAX_LINK:
            return DAMAGED, ""
        try:
            link = self.target.readlink(entry.path)
        except OSError:
            return DAMAGED, ""
        if by_digest:
            same = digest_matches(hashlib.new(entry.algorithm, link).hexdigest(), entry.digest or "")
        else:
            same = entry.link is None or link == entry.link
        return (INTACT, "") if same else (DAMAGED, "")

    def _special(self, entry: Entry) -> Tuple[str, str]:
        st, verdict = self._lstat(entry)
        if verdict is not None:
            return verdict
        mode = st.st_mode
        if entry.special == "fifo" and stat.S_ISFIFO(mode):
            return INTACT, ""
        if entry.special == "device" and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            return INTACT, ""
        if entry.special == "socket" and stat.S_ISSOCK(mode):
            return INTACT, ""
        return DAMAGED, ""


def _is_symlink(error: OSError) -> bool:
    return error.errno == errno.ELOOP or (isinstance(error, NotRegularFile) and error.kind == "symlink")


def _metadata_differs(entry: Entry, st) -> bool:
    if st is None:
        return False
    return (
        (entry.mode is not None and stat.S_IMODE(st.st_mode) != entry.mode)
        or (entry.uid is not None and st.st_uid != entry.uid)
        or (entry.gid is not None and st.st_gid != entry.gid)
    )
