"""What a hash result means for a file that a manifest describes: the outcome every
file-verifying checker reports the same way."""

from __future__ import annotations

import errno
from typing import Dict, Optional, Tuple

from fsaudit.hashing import ABSURD_SIZE, SPARSE, HashResult
from fsaudit.target import NotRegularFile

OK = "ok"
MISSING = "missing"
WRONG_TYPE = "wrong-type"
UNREADABLE = "unreadable"
CONTENT_DIFFERS = "content-differs"
# Not readable for lack of permission: never damage, never a finding, never a reason to repair.
PERMISSION_DENIED = "permission-denied"
# Not read because the file is an anomaly of its own (HashResult.anomaly): gigabytes of holes where
# no size was expected, or a size larger than its filesystem. Never the installed file; a finding
# whose code is the anomaly's (`sparse`, `absurd-size`).
ANOMALY = "anomaly"

# The stats counter of files not checked for lack of permission (the same name in every checker).
NOT_CHECKED_PERMISSION = "not_checked_permission"


# A package manager gives each file it installs the packaged mtime (or the installation's), and lost
# writes change content without touching mtimes: a file whose mtime is this many seconds after its
# package's installation was written by something on the system since.
MTIME_SLACK = 1.0


def changed_after(mtime: Optional[float], installed: Optional[float]) -> bool:
    """Whether a file's (or a store path's latest) mtime says it was written after `installed`."""
    return installed is not None and mtime is not None and mtime > installed + MTIME_SLACK


def local_change(mtime: Optional[float], installed: Optional[float], window) -> bool:
    """A change the system made itself: written after installation and outside the suspect window
    (`window`, or None). A write inside the window is at risk, not an ordinary local change."""
    return changed_after(mtime, installed) and (window is None or not window.contains(mtime))


def is_permission_denied(error: Optional[BaseException]) -> bool:
    """Whether `error` says the audit may not read something (EACCES, EPERM), as opposed to the
    something being damaged (EIO, ...)."""
    return isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM)


def not_checked_for_permission(checker, amount: int = 1) -> None:
    """Count what `checker` could not read for lack of permission: not damage, and no finding. The
    runner turns the count into the check's reason (its status becomes unknown unless damage was
    found); `permission_reason` says it in the same words for a checker that wants to say it itself."""
    checker.count(NOT_CHECKED_PERMISSION, amount)


def permission_reason(count: int) -> str:
    """The reason for a check that could not read `count` files for lack of permission."""
    return f"{count:,} files not checked: permission denied (run as root to check them)"


# The findings of ANOMALY, as checkers declare them (`codes = {..., **ANOMALY_CODES}`).
ANOMALY_CODES = {
    "sparse": "a file that should hold written content is mostly holes (zeros nobody wrote, more "
    "than 64 MiB): not the installed file; it was not read",
    "absurd-size": "a file claims a size larger than its whole filesystem: damaged filesystem "
    "metadata; it was not read",
}


def outcome(result: HashResult, expected_digest: Optional[str]) -> str:
    """One of OK, MISSING, WRONG_TYPE, UNREADABLE, PERMISSION_DENIED, ANOMALY, CONTENT_DIFFERS for
    `result`.

    A symlink where a regular file belongs shows as ELOOP when it is opened without following it.
    """
    error = result.error
    if error is not None:
        if isinstance(error, NotRegularFile) or error.errno == errno.ELOOP:
            return WRONG_TYPE
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            return MISSING
        if is_permission_denied(error):
            return PERMISSION_DENIED
        return UNREADABLE
    if result.anomaly is not None:
        return ANOMALY
    if result.size_differs:
        return CONTENT_DIFFERS
    if expected_digest is not None and result.digest != expected_digest.lower():
        return CONTENT_DIFFERS
    return OK


def describe_error(result: HashResult) -> str:
    """Why a file could not be read, in words for the report."""
    error = result.error
    if isinstance(error, NotRegularFile):
        return f"a {error.kind} stands where a regular file belongs"
    if error is not None and error.errno == errno.ELOOP:
        return "a symlink stands where a regular file belongs"
    if error is not None:
        return error.strerror or str(error)
    return ""


def size_text(count: float) -> str:
    """A byte count in words for the report: "10.7 GB"."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return ""


def anomaly(result: HashResult, what: str = "file") -> Tuple[str, str, Dict[str, int]]:
    """(code, message, details) of the finding for a file that was not read because it is an anomaly
    of its own (`outcome` gave ANOMALY): the code is the anomaly's, `sparse` or `absurd-size`."""
    size = result.size or 0
    details = {"size": size, "holes": result.holes}
    if result.anomaly == ABSURD_SIZE:
        message = (
            f"{what} claims a size of {size_text(size)}, more than its whole filesystem holds: "
            "its size in the filesystem's metadata is damaged (not read)"
        )
    elif result.anomaly == SPARSE:
        message = (
            f"{what} is {size_text(size)} long of which {size_text(result.holes)} are holes "
            "(zeros nobody wrote): not the content that was installed (not read)"
        )
    else:
        message = f"{what} was not read: {result.anomaly}"
    return str(result.anomaly), message, details


UNREADABLE_ADVICE = "check the disk; restore the file from backup if it stays unreadable"


def unverified_finding(
    checker, verdict: str, result: HashResult, path, advice: str, what: str = "file", **fields
):
    """The finding for a file that could not be compared: `missing`, `wrong-type` and the anomalies
    `sparse` and `absurd-size` (critical, with the checker's `advice`) or `unreadable` (a warning,
    counted in `files_unreadable`).
    `fields` (subject, details) go into the finding as they are. PERMISSION_DENIED has no finding:
    give it to `not_checked_for_permission` instead."""
    if verdict == PERMISSION_DENIED:
        raise ValueError("permission denied is not damage: count it with not_checked_for_permission()")
    if verdict == MISSING:
        return checker.finding(
            "missing", "critical", f"{what} is missing", path=path, advice=advice, **fields
        )
    if verdict == WRONG_TYPE:
        return checker.finding(
            "wrong-type", "critical", describe_error(result), path=path, advice=advice, **fields
        )
    if verdict == ANOMALY:
        code, message, found = anomaly(result, what)
        fields["details"] = {**(fields.get("details") or {}), **found}
        return checker.finding(code, "critical", message, path=path, advice=advice, **fields)
    checker.count("files_unreadable")
    message = f"could not be read: {describe_error(result)}"
    return checker.finding("unreadable", "warning", message, path=path, advice=UNREADABLE_ADVICE, **fields)
