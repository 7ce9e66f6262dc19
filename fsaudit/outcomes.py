"""What a hash result means for a file that a manifest describes: the outcome every
file-verifying checker reports the same way."""

from __future__ import annotations

import errno
from typing import Optional

from fsaudit.hashing import HashResult
from fsaudit.target import NotRegularFile

OK = "ok"
MISSING = "missing"
WRONG_TYPE = "wrong-type"
UNREADABLE = "unreadable"
CONTENT_DIFFERS = "content-differs"


def outcome(result: HashResult, expected_digest: Optional[str]) -> str:
    """One of OK, MISSING, WRONG_TYPE, UNREADABLE, CONTENT_DIFFERS for `result`.

    A symlink where a regular file belongs shows as ELOOP when it is opened without following it.
    """
    error = result.error
    if error is not None:
        if isinstance(error, NotRegularFile) or error.errno == errno.ELOOP:
            return WRONG_TYPE
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            return MISSING
        return UNREADABLE
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


UNREADABLE_ADVICE = "check the disk; restore the file from backup if it stays unreadable"


def unverified_finding(
    checker, verdict: str, result: HashResult, path, advice: str, what: str = "file", **fields
):
    """The finding for a file that could not be compared: `missing` and `wrong-type` (critical,
    with the checker's `advice`) or `unreadable` (a warning, counted in `files_unreadable`).
    `fields` (subject, details) go into the finding as they are."""
    if verdict == MISSING:
        return checker.finding(
            "missing", "critical", f"{what} is missing", path=path, advice=advice, **fields
        )
    if verdict == WRONG_TYPE:
        return checker.finding(
            "wrong-type", "critical", describe_error(result), path=path, advice=advice, **fields
        )
    checker.count("files_unreadable")
    message = f"could not be read: {describe_error(result)}"
    return checker.finding("unreadable", "warning", message, path=path, advice=UNREADABLE_ADVICE, **fields)
