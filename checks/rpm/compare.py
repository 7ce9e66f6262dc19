"""The per-file comparison of `rpm -V`, as pure functions of a manifest entry and what is on disk.

`plan()` decides from the entry and its `lstat` which attributes rpm would compare (the same
exclusions: file states, %ghost, file types) and compares all but the digest; `finish()` adds the
digest outcome. `flag_string()` renders the result the way rpm -V prints it (`S.5....T.`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Dict, Tuple

from fsaudit_checks.rpm.header import (
    RPMFILE_ARTIFACT,
    RPMFILE_CONFIG,
    RPMFILE_DOC,
    RPMFILE_GHOST,
    RPMFILE_LICENSE,
    RPMFILE_MISSINGOK,
    RPMFILE_README,
    STATE_NETSHARED,
    STATE_NOTINSTALLED,
    STATE_REPLACED,
    STATE_WRONGCOLOR,
    VERIFY_DIGEST,
    VERIFY_GROUP,
    VERIFY_LINKTO,
    VERIFY_MODE,
    VERIFY_MTIME,
    VERIFY_RDEV,
    VERIFY_SIZE,
    VERIFY_USER,
    FileEntry,
)

# The columns of rpm -V's flag string, in order; "P" (capabilities) is never set here.
COLUMNS = "SM5DLUGTP"


class Accounts:
    """User and group names of the audited system (its own etc/passwd and etc/group)."""

    def __init__(self, passwd: str = "", group: str = ""):
        self.uid_by_name, self.name_by_uid = self._parse(passwd)
        self.gid_by_name, self.name_by_gid = self._parse(group)

    @staticmethod
    def _parse(text: str) -> Tuple[Dict[bytes, int], Dict[int, bytes]]:
        by_name: Dict[bytes, int] = {b"root": 0}
        by_id: Dict[int, bytes] = {0: b"root"}
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) < 3 or not fields[2].isdigit():
                continue
            name = fields[0].encode("utf-8", "surrogateescape")
            number = int(fields[2])
            by_name.setdefault(name, number)
            by_id.setdefault(number, name)
        return by_name, by_id

    @staticmethod
    def matches(expected: bytes, actual_id: int, by_name: Dict[bytes, int], by_id: Dict[int, bytes]) -> bool:
        # rpm accepts either a name match or an id match (lib/verify.c).
        return by_id.get(actual_id) == expected or by_name.get(expected) == actual_id

    def user_ok(self, expected: bytes, uid: int) -> bool:
        return self.matches(expected, uid, self.uid_by_name, self.name_by_uid)

    def group_ok(self, expected: bytes, gid: int) -> bool:
        return self.matches(expected, gid, self.gid_by_name, self.name_by_gid)

    def user(self, uid: int) -> str:
        return os.fsdecode(self.name_by_uid.get(uid, str(uid).encode()))

    def group(self, gid: int) -> str:
        return os.fsdecode(self.name_by_gid.get(gid, str(gid).encode()))


@dataclass
class Outcome:
    """What rpm -V would say about one file."""

    entry: FileEntry
    skipped: bool = False  # not verified at all (not installed, netshared, a missing %ghost)
    # This user may not look at or read the file: not verified, and not damage either.
    denied: bool = False
    missing: bool = False
    error: str | None = None
    flags: set = field(default_factory=set)
    unreadable: set = field(default_factory=set)  # columns printed as "?"
    hash_needed: bool = False
    st: os.stat_result | None = None
    actual: dict = field(default_factory=dict)

    @property
    def ghost(self) -> bool:
        return bool(self.entry.flags & RPMFILE_GHOST)

    @property
    def config(self) -> bool:
        return bool(self.entry.flags & RPMFILE_CONFIG)

    @property
    def type_differs(self) -> bool:
        if self.st is None or self.ghost:
            return False
        return stat.S_IFMT(self.entry.mode) != stat.S_IFMT(self.st.st_mode)


def effective_flags(entry: FileEntry) -> int | None:
    """The attributes rpm compares for this entry before looking at the disk (None: skip it)."""
    flags = entry.verify
    if entry.state in (STATE_NOTINSTALLED, STATE_NETSHARED):
        return None
    if entry.state == STATE_REPLACED:
        flags = 0
    elif entry.state == STATE_WRONGCOLOR:
        flags &= ~(VERIFY_DIGEST | VERIFY_SIZE | VERIFY_MTIME | VERIFY_RDEV)
    if entry.flags & RPMFILE_GHOST:
        flags &= ~(VERIFY_DIGEST | VERIFY_SIZE | VERIFY_MTIME | VERIFY_LINKTO)
    return flags


def plan(entry: FileEntry, target, accounts: Accounts) -> Outcome:
    """Compare everything but the digest; say whether the digest must be computed."""
    outcome = Outcome(entry)
    flags = effective_flags(entry)
    if flags is None:
        outcome.skipped = True
        return outcome
    try:
        st = target.lstat(entry.path)
    except PermissionError:
        outcome.denied = True
        return outcome
    except OSError as error:
        if entry.flags & (RPMFILE_GHOST | RPMFILE_MISSINGOK):
            outcome.skipped = True
        else:
            outcome.missing = True
            if not isinstance(error, FileNotFoundError):
                outcome.error = error.strerror or str(error)
        return outcome
    if stat.S_ISLNK(st.st_mode) and stat.S_ISDIR(entry.mode):
        st = _followed_directory(target, entry, st, accounts)
    outcome.st = st
    if stat.S_ISLNK(st.st_mode):
        flags &= ~VERIFY_MODE
    else:
        flags &= ~VERIFY_LINKTO
    if not stat.S_ISREG(st.st_mode):
        flags &= ~(VERIFY_DIGEST | VERIFY_SIZE | VERIFY_MTIME)
    _compare(outcome, flags, st, target, accounts)
    outcome.hash_needed = bool(flags & VERIFY_DIGEST) and "S" not in outcome.flags
    if flags & VERIFY_DIGEST and "S" in outcome.flags:
        # A different size means a different digest: rpm prints both, no need to read the file.
        outcome.flags.add("5")
    return outcome


def _followed_directory(target, entry: FileEntry, st, accounts: Accounts):
    # rpm follows a symlink where a directory was packaged when root or the directory's owner owns it.
    try:
        followed = target.stat(entry.path)
    except OSError:
        return st
    if stat.S_ISDIR(followed.st_mode) and (
        st.st_uid == 0 or accounts.uid_by_name.get(entry.user) == st.st_uid
    ):
        return followed
    return st


def _compare(outcome: Outcome, flags: int, st, target, accounts: Accounts) -> None:
    entry = outcome.entry
    if flags & VERIFY_SIZE and st.st_size != entry.size:
        outcome.flags.add("S")
        outcome.actual["size"] = st.st_size
    if flags & VERIFY_MODE:
        expected, actual = entry.mode & 0xFFFF, st.st_mode & 0xFFFF
        if outcome.ghost:
            expected, actual = expected & 0o7777, actual & 0o7777
        if expected != actual:
            outcome.flags.add("M")
            outcome.actual["mode"] = st.st_mode
    if flags & VERIFY_RDEV:
        _compare_rdev(outcome, st)
    if flags & VERIFY_LINKTO:
        try:
            link = target.readlink(entry.path)
        except OSError:
            outcome.unreadable.add("L")
        else:
            if link != entry.link:
                outcome.flags.add("L")
                outcome.actual["link"] = link
    if flags & VERIFY_USER and not accounts.user_ok(entry.user, st.st_uid):
        outcome.flags.add("U")
        outcome.actual["user"] = accounts.user(st.st_uid)
    if flags & VERIFY_GROUP and not accounts.group_ok(entry.group, st.st_gid):
        outcome.flags.add("G")
        outcome.actual["group"] = accounts.group(st.st_gid)
    if flags & VERIFY_MTIME and int(st.st_mtime) != entry.mtime:
        outcome.flags.add("T")
        outcome.actual["mtime"] = int(st.st_mtime)


def _compare_rdev(outcome: Outcome, st) -> None:
    expected = outcome.entry.mode
    if stat.S_ISCHR(expected) != stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(expected) != stat.S_ISBLK(
        st.st_mode
    ):
        outcome.flags.add("D")
    elif (stat.S_ISCHR(expected) or stat.S_ISBLK(expected)) and (st.st_rdev & 0xFFFF) != (
        outcome.entry.rdev & 0xFFFF
    ):
        # rpm compares device numbers in 16 bits.
        outcome.flags.add("D")
        outcome.actual["rdev"] = st.st_rdev


def finish(outcome: Outcome, digest: str | None, error: OSError | None, anomaly: str | None = None) -> None:
    """Add the outcome of hashing the file (`anomaly`: why a file of the right size was not read)."""
    if isinstance(error, PermissionError):
        outcome.denied = True
    elif error is not None:
        outcome.unreadable.add("5")
        outcome.error = error.strerror or str(error)
    elif anomaly is not None:
        outcome.unreadable.add("5")
        outcome.error = f"not read ({anomaly}: larger than its filesystem)"
    elif digest is not None and digest != outcome.entry.digest.decode("ascii", "replace").lower():
        outcome.flags.add("5")
        outcome.actual["digest"] = digest


def flag_string(outcome: Outcome) -> str:
    """The rpm -V column string: a letter per differing attribute, "?" when it could not be read."""
    return "".join(
        "?" if column in outcome.unreadable else column if column in outcome.flags else "."
        for column in COLUMNS
    )


_MARKERS = (
    (RPMFILE_CONFIG, "c"),
    (RPMFILE_DOC, "d"),
    (RPMFILE_GHOST, "g"),
    (RPMFILE_LICENSE, "l"),
    (RPMFILE_README, "r"),
    (RPMFILE_ARTIFACT, "a"),
)


def attribute_marker(flags: int) -> str:
    """The letter rpm -V prints before the path (c for %config, d for %doc, ...), or a space."""
    for bit, letter in _MARKERS:
        if flags & bit:
            return letter
    return " "
