"""Checker `window`: what changed on disk during the suspect window, and what no checker verified.

Blocks written while the storage misbehaved are the ones that may have been lost: files whose
content (mtime) or inode (ctime) changed in the window, and directories whose listing changed in it
(an entry created, renamed or removed then may be missing or back). The walk uses `lstat` only,
never opens a file, never follows a symlink, stays on local disk filesystems, and keeps per-directory
counts only, so memory stays flat however many entries the tree holds.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from datetime import datetime, timezone
from typing import Dict, Iterator, List, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.model import Finding, Severity
from fsaudit.scan import Listing
from fsaudit.target import Target, file_kind
from fsaudit.window import Window, WindowError, WindowSpec
from fsaudit_checks.window.mounts import excluded_mounts, read_mounts

# Deeper than this, directories are reported as not walked (a loop or a hostile tree).
MAX_DEPTH = 250
# Distinct top-level directories and owners counted one by one; the rest are counted together.
MAX_GROUPS = 10_000
OTHER = "(others)"
_PASSWD_LIMIT = 4 << 20
# Errors that say the filesystem itself is damaged, as opposed to "not allowed" or "gone".
_DAMAGE_ERRNOS = {errno.EIO, errno.EBADMSG, errno.ESTALE, getattr(errno, "EUCLEAN", 117)}
_GONE_ERRNOS = {errno.ENOENT, errno.ENOTDIR}

ADVICE_UNVERIFIED = (
    "No checker could verify this file: compare it with a backup, or have its application check it; "
    "restore it from a backup if it differs."
)
ADVICE_VERIFIED = (
    "A checker compared this file with an independent expectation; that check's findings say whether "
    "it is damaged."
)
ADVICE_DIRECTORY = (
    "Entries of this directory created, renamed or removed in the window may be missing or back: "
    "compare its listing with a backup and restore what is missing."
)
ADVICE_UNREADABLE = "Run the audit as root to check what is below this directory."
ADVICE_READ_ERROR = (
    "The filesystem reports damage here: run fsck on it (unmounted) and restore what it cannot repair "
    "from a backup."
)


def window_range(raw) -> WindowSpec:
    """A window option, read now (its zone is applied when the audited system's is known)."""
    try:
        return WindowSpec.parse(str(raw))
    except WindowError as error:
        raise ValueError(str(error)) from None


# Option errors say "expected <kind name>": make that a useful sentence.
window_range.__name__ = "START..END (ISO 8601 at each end, e.g. 2014-06-02..2014-06-07)"


def _inner(path: str) -> bytes:
    parts = [part for part in os.fsencode(path).split(b"/") if part and part != b"."]
    return b"/" + b"/".join(parts)


def _outermost(paths) -> List[bytes]:
    """The paths to walk, without those inside another one (walked with it)."""
    chosen: List[bytes] = []
    for path in sorted(set(paths), key=lambda p: (len(p), p)):
        if not any(path == top or path.startswith(top.rstrip(b"/") + b"/") for top in chosen):
            chosen.append(path)
    return chosen


def _top_directory(path: bytes, directory: bool = False) -> bytes:
    """`/var` for `/var/lib/x` (and for the directory `/var`); `/` for a file directly in the root."""
    head = path[1:].split(b"/", 1)
    return b"/" + head[0] if len(head) > 1 or (directory and head[0]) else b"/"


def _plural(count: int, word: str, words: str = "") -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {words or word + 's'}"


class _Tally:
    """At-risk counts per group (top-level directory, owner), bounded in size."""

    def __init__(self):
        self.groups: Dict[object, List[int]] = {}

    def add(self, key, verified: bool, directory: bool = False) -> None:
        counts = self.groups.get(key)
        if counts is None:
            if len(self.groups) >= MAX_GROUPS:
                key = OTHER
            counts = self.groups.setdefault(key, [0, 0, 0])
        if directory:
            counts[2] += 1
        else:
            counts[0] += 1
            if not verified:
                counts[1] += 1


class WindowChecker(Checker):
    """Files and directories changed during the suspect window, and which of them no checker verified."""

    name = "window"
    covers = "files changed during the incident window"
    category = "time-window"
    # With `fsaudit self-check PATH... --window ...` it walks the customer's paths.
    self_check = True
    # After the checkers that verify files (debian, rpm, pip, baseline), so `context.verified` is full.
    order = 90
    options = (
        Option(
            "window", "the suspect window for this check (default: the audit's --window)", kind=window_range
        ),
        Option("paths", "directories to walk, inside the audited system", multiple=True, default=("/",)),
        Option(
            "list_entries",
            "in each changed directory's finding, list all its entry names and those changed in the window",
            kind=bool,
            default=False,
        ),
        Option(
            "list_limit",
            "list at most this many findings of each code and severity (0: no limit); the rest are counted",
            kind=int,
            default=25_000,
        ),
    )
    codes = {
        "modified-in-window": "a file, symlink or special file whose content time (mtime) lies in the "
        "window; warning when no checker verified it, info when one did",
        "changed-in-window": "an entry whose inode change time (ctime), but not its mtime, lies in the "
        "window: its owner, mode, links or name changed, or it was installed with an older mtime; warning "
        "when no checker verified it, info when one did",
        "directory-changed-in-window": "a directory whose mtime or ctime lies in the window: entries "
        "created, renamed or removed then may be missing or back; details count its entries and those "
        "at risk",
        "unreadable-directory": "a directory the walk could not list or whose entries it could not examine "
        "(permission, or deeper than the walk goes): nothing below it was checked",
        "read-error": "the filesystem answered with an I/O or corruption error for a directory or an entry",
        "summary-by-directory": "entries at risk and those no checker verified, per top-level directory",
        "summary-by-owner": "entries at risk and those no checker verified, per owning user",
    }

    @property
    def cap(self) -> int:
        """Findings listed per code and severity (`list_limit`); the runner counts the rest."""
        return self.settings["list_limit"]

    def applies(self, target: Target) -> bool:
        if self._choose_window() is None:
            raise Skip(
                "no window given: use --window START..END, `window` in [audit] or [checks.window] "
                "of the config, or --set window.window=START..END"
            )
        return True

    def _choose_window(self) -> Window | None:
        """This check's own `window` option placed in the audited system's zone, else the audit's."""
        spec = self.settings["window"]
        if spec is None:
            return self.context.window
        try:
            return spec.resolve(self.context.timezone)
        except WindowError as error:
            raise Skip(f"window.window: {error}") from None

    # -- the walk ----------------------------------------------------------------------------------

    def run(self, target: Target) -> Iterator[Finding]:
        window = self._choose_window()
        if window is None:
            raise Skip("no window given")
        self._start, self._end = window.start_ts, window.end_ts
        self._tz = (window.start or window.end).tzinfo if (window.start or window.end) else timezone.utc
        self._target = target
        self._verified = self._canonical_verified(target)
        self._pending: Dict[bytes, os.stat_result] = {}
        self._errors: List[Tuple[bytes, OSError]] = []
        self._by_top = _Tally()
        self._by_owner = _Tally()
        self._owners: Dict[int, str] | None = None
        self._times: Dict[int, str] = {}
        self.stats["window"] = str(window)
        for key in (
            "entries_scanned",
            "directories_scanned",
            "files_modified_in_window",
            "files_changed_in_window",
            "directories_changed_in_window",
            "at_risk_not_verified",
            "at_risk_verified",
            "directories_unreadable",
        ):
            self.stats[key] = 0
        try:
            mounts = read_mounts()
        except OSError as error:
            mounts = None
            self.stats["mount_table"] = (
                f"not read ({error.strerror}): mounted filesystems were not told apart"
            )
        for top in _outermost(_inner(path) for path in self.settings["paths"]):
            yield from self._walk(target, top, mounts)
        yield from self._summaries()

    def _canonical_verified(self, target: Target) -> set:
        """The verified paths, plus each one's real location when it was recorded through a symlinked
        directory (a package lists /bin/ls, the walk finds /usr/bin/ls on merged-/usr)."""
        verified = self.context.verified
        extra = set()
        for path in verified:
            if isinstance(path, str):
                path = os.fsencode(path)
                extra.add(path)
            try:
                real = target.inner_path(target.resolve(path, follow=False))
            except OSError:
                continue
            if real != path:
                extra.add(real)
        return verified | extra if extra else verified

    def _walk(self, target: Target, top: bytes, mounts) -> Iterator[Finding]:
        try:
            host_top = target.resolve(top, follow=True)
            st = os.lstat(host_top)
        except OSError as error:
            yield from self._error(top, error)
            return
        top = target.inner_path(host_top)
        if not stat.S_ISDIR(st.st_mode):
            self.count("entries_scanned")
            yield from self._entry(top, st)
            return
        if self._in_window(st):
            self._pending[top] = st
        excluded = excluded_mounts(mounts, host_top) if mounts is not None else {}
        if excluded:
            self.count("mounts_skipped", len(excluded))
            skipped = self.stats.setdefault("skipped_mounts", [])
            for point, why in sorted(excluded.items()):
                skipped.append(f"{target.display(target.inner_path(point))} ({why})")
        base_depth = top.rstrip(b"/").count(b"/")

        def descend(child: bytes, host: bytes, st: os.stat_result) -> bool:
            if excluded and host in excluded:
                return False
            if child.count(b"/") - base_depth > MAX_DEPTH:
                self._pending.pop(child, None)
                self._errors.append(
                    (child, OSError(errno.ELOOP, f"deeper than {MAX_DEPTH} levels; not walked"))
                )
                return False
            return True

        # A directory changed in the window sends all its entries back (its finding counts them);
        # from the others, only what changed in the window and the subdirectories.
        walk = target.scan(
            host_top,
            self._start,
            self._end,
            self.context,
            full=self._in_window,
            top_full=top in self._pending,
            descend=descend,
            max_depth=MAX_DEPTH + 1,
            # Listed ahead of the walk only where it will go: never a mount it leaves out.
            may_list=lambda host, depth: host not in excluded and depth <= MAX_DEPTH,
        )
        for directory, host, listing in walk:
            if isinstance(listing, OSError):
                self._errors.append((directory, listing))
                continue
            if self._errors:
                yield from self._drain_errors()
            yield from self._directory(directory, host, listing, excluded)
        yield from self._drain_errors()

    def _in_window(self, st: os.stat_result) -> bool:
        return self._start <= st.st_mtime < self._end or self._start <= st.st_ctime < self._end

    def _directory(self, directory: bytes, host: bytes, listing: Listing, excluded) -> Iterator[Finding]:
        self.stats["directories_scanned"] += 1
        self.stats["entries_scanned"] += listing.entries
        own = self._pending.pop(directory, None)
        base = b"" if directory == b"/" else directory
        host_base = b"" if host == b"/" else host
        start, end = self._start, self._end
        at_risk = not_verified = denied = 0
        # Names of the entries changed in the window, kept only when asked for and only for the
        # directory being read.
        names: List[bytes] | None = [] if own is not None and self.settings["list_entries"] else None
        for name, _kind, st in listing.records:
            if excluded and host_base + b"/" + name in excluded:
                continue
            if isinstance(st, OSError):
                if st.errno in _GONE_ERRNOS:
                    self.count("entries_vanished")
                elif st.errno in _DAMAGE_ERRNOS:
                    yield from self._error(base + b"/" + name, st)
                else:
                    denied += 1
                continue
            modified = start <= st.st_mtime < end
            if not (modified or start <= st.st_ctime < end):
                if (
                    own is not None
                    and not stat.S_ISDIR(st.st_mode)
                    and base + b"/" + name not in self._verified
                ):
                    not_verified += 1
                continue
            at_risk += 1
            if names is not None:
                names.append(name)
            path = base + b"/" + name
            if stat.S_ISDIR(st.st_mode):
                # Its finding comes when its own listing is read, with the counts of what is in it.
                self._pending[path] = st
                continue
            verified = path in self._verified
            not_verified += not verified
            yield from self._file(path, st, modified, verified)
        if denied:
            self.stats["directories_unreadable"] += 1
            yield self._finding(
                "unreadable-directory",
                Severity.WARNING,
                f"{denied:,} of its {listing.entries:,} entries could not be examined (permission denied)",
                directory,
                {"entries_not_examined": denied},
                ADVICE_UNREADABLE,
            )
        if own is not None:
            every = [name for name, _, _ in listing.records] if self.settings["list_entries"] else None
            yield from self._directory_finding(
                directory, own, listing.entries, at_risk, not_verified, names, every
            )

    def _file(self, path: bytes, st: os.stat_result, modified: bool, verified: bool) -> Iterator[Finding]:
        mtime, ctime = self._time(st.st_mtime), self._time(st.st_ctime)
        if modified:
            code = "modified-in-window"
            self.stats["files_modified_in_window"] += 1
            what = f"modified in the window (mtime {mtime})"
        else:
            code = "changed-in-window"
            self.stats["files_changed_in_window"] += 1
            what = f"inode changed in the window (ctime {ctime}), content time outside it (mtime {mtime})"
        self.stats["at_risk_verified" if verified else "at_risk_not_verified"] += 1
        owner = self._owner(st.st_uid)
        self._by_top.add(_top_directory(path), verified)
        self._by_owner.add(owner, verified)
        severity = Severity.INFO if verified else Severity.WARNING
        message = what + ("; a checker verified it" if verified else "; no checker verified it")
        details = {
            "kind": file_kind(st.st_mode),
            "size": st.st_size,
            "mtime": mtime,
            "ctime": ctime,
            "owner": owner,
            "verified": verified,
        }
        yield self._finding(
            code, severity, message, path, details, ADVICE_VERIFIED if verified else ADVICE_UNVERIFIED
        )

    def _directory_finding(
        self,
        directory: bytes,
        st: os.stat_result,
        entries: int | None,
        at_risk: int,
        not_verified: int,
        names: List[bytes] | None = None,
        every: List[bytes] | None = None,
    ) -> Iterator[Finding]:
        self.stats["directories_changed_in_window"] += 1
        self._by_top.add(_top_directory(directory, directory=True), True, directory=True)
        self._by_owner.add(self._owner(st.st_uid), True, directory=True)
        which = "mtime" if self._start <= st.st_mtime < self._end else "ctime"
        when = self._time(st.st_mtime if which == "mtime" else st.st_ctime)
        details = {
            "mtime": self._time(st.st_mtime),
            "ctime": self._time(st.st_ctime),
            "owner": self._owner(st.st_uid),
        }
        if entries is None:
            message = f"directory changed in the window ({which} {when}); its entries could not be listed"
        else:
            details.update(entries=entries, entries_in_window=at_risk, files_not_verified=not_verified)
            message = (
                f"directory changed in the window ({which} {when}): {at_risk:,} of its {entries:,} "
                f"entries changed in the window; {not_verified:,} files in it no checker verified"
            )
            if self.settings["list_entries"]:
                details["entry_names"] = sorted(every or ())
                details["names_in_window"] = sorted(names or ())
        yield self._finding(
            "directory-changed-in-window", Severity.WARNING, message, directory, details, ADVICE_DIRECTORY
        )

    def _entry(self, path: bytes, st: os.stat_result) -> Iterator[Finding]:
        """A path given in `paths` that is not a directory."""
        modified = self._start <= st.st_mtime < self._end
        if modified or self._start <= st.st_ctime < self._end:
            yield from self._file(path, st, modified, path in self._verified)

    # -- errors ------------------------------------------------------------------------------------

    def _drain_errors(self) -> Iterator[Finding]:
        errors, self._errors = self._errors, []
        for directory, error in errors:
            own = self._pending.pop(directory, None)
            if own is not None and error.errno not in _GONE_ERRNOS:
                yield from self._directory_finding(directory, own, None, 0, 0)
            yield from self._error(directory, error)

    def _error(self, path: bytes, error: OSError) -> Iterator[Finding]:
        reason = error.strerror or str(error)
        details = {"errno": errno.errorcode.get(error.errno, str(error.errno))}
        if error.errno in _GONE_ERRNOS and path not in self._walk_tops():
            # Removed while the walk ran: nothing left to check, but count it.
            self.count("entries_vanished")
            return
        if error.errno in _DAMAGE_ERRNOS:
            self.count("read_errors")
            yield self._finding(
                "read-error",
                Severity.CRITICAL,
                f"the filesystem answered {reason}",
                path,
                details,
                ADVICE_READ_ERROR,
            )
            return
        self.stats["directories_unreadable"] += 1
        yield self._finding(
            "unreadable-directory",
            Severity.WARNING,
            f"could not be walked: {reason}; nothing below it was checked",
            path,
            details,
            ADVICE_UNREADABLE if error.errno in (errno.EACCES, errno.EPERM) else "",
        )

    def _walk_tops(self) -> set:
        return {_inner(path) for path in self.settings["paths"]}

    # -- output ------------------------------------------------------------------------------------

    def _finding(self, code, severity, message, path, details, advice) -> Finding:
        return self.finding(code, severity, message, path=path, details=details, advice=advice)

    def _summaries(self) -> Iterator[Finding]:
        by_top = {
            self._target.display(key) if isinstance(key, bytes) else key: v
            for key, v in self._by_top.groups.items()
        }
        for label, groups, code in (
            ("top-level directory", by_top, "summary-by-directory"),
            ("owner", self._by_owner.groups, "summary-by-owner"),
        ):
            stat_key = "at_risk_by_directory" if code == "summary-by-directory" else "at_risk_by_owner"
            self.stats[stat_key] = {
                key: {"files": c[0], "files_not_verified": c[1], "directories": c[2]}
                for key, c in sorted(groups.items())
            }
            for key, (files, not_verified, directories) in sorted(
                groups.items(), key=lambda item: -item[1][1]
            ):
                yield self.finding(
                    code,
                    Severity.INFO,
                    f"{_plural(files, 'file')} changed in the window, {not_verified:,} of them not verified "
                    f"by any checker; {_plural(directories, 'directory', 'directories')} changed",
                    subject=f"{label} {key}",
                    details={"files": files, "files_not_verified": not_verified, "directories": directories},
                )

    def _time(self, timestamp: float) -> str:
        # Files changed together share their second: each second is formatted once.
        second = math.floor(timestamp)
        text = self._times.get(second)
        if text is None:
            try:
                text = datetime.fromtimestamp(second, self._tz).isoformat(timespec="seconds")
            except (OverflowError, OSError, ValueError):
                return str(timestamp)
            if len(self._times) >= MAX_GROUPS:
                self._times.clear()
            self._times[second] = text
        return text

    def _owner(self, uid: int) -> str:
        if self._owners is None:
            self._owners = self._read_passwd()
        return self._owners.get(uid) or f"uid {uid}"

    def _read_passwd(self) -> Dict[int, str]:
        """User names of the audited system (its own /etc/passwd, not this machine's)."""
        try:
            text = self._target.read_text("/etc/passwd", limit=_PASSWD_LIMIT)
        except OSError:
            return {}
        names: Dict[int, str] = {}
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[2].isdigit():
                names.setdefault(int(fields[2]), fields[0])
        return names
