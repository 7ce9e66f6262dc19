"""What a package manager's database says about an installed package, as its reader hands it to the
shared verifier: the package's identity, each path with its recorded type, digest, size, mtime,
owner and mode, and the damage found in the database on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, Union

FILE = "file"
DIRECTORY = "directory"
SYMLINK = "symlink"
# apk records one digest per path: of the content of a regular file, of the target of a symlink.
FILE_OR_SYMLINK = "file-or-symlink"
SPECIAL = "special"


@dataclass
class Damage:
    """A problem of the package database itself: which file, what is wrong, where."""

    path: bytes
    problem: str
    line: int = 0
    count: int = 1


@dataclass
class Entry:
    """One path a package installed, with what its database recorded about it.

    `digest` is lower-case hex of `algorithm` (a hashlib name); a shorter digest than the algorithm
    gives is a prefix of it (apk's SHA-256 cut to 160 bits). `mtime` is the recorded mtime in whole
    seconds; `mode` the permission bits (07777); `link` a symlink's recorded target.
    """

    path: bytes
    kind: str = FILE
    digest: str | None = None
    algorithm: str = ""
    size: int | None = None
    mtime: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    link: bytes | None = None
    conffile: bool = False
    # For SPECIAL entries: "fifo" or "device".
    special: str = ""


@dataclass
class Package:
    """One installed package: its identity as every finding carries it, and its entries.

    `installed` is the time after which no write to its files was the package manager's (pacman's
    install date; apk's build time, since apk gives every file the archive's mtime); None: compare
    with each entry's recorded mtime. `entries` yields `Entry` and `Damage` (read lazily, once).
    """

    name: str
    version: str
    architecture: str = ""
    installed: float | None = None
    database: bytes = b""
    identity: Dict[str, Any] = field(default_factory=dict)
    entries: Iterable[Union[Entry, Damage]] = ()

    @property
    def subject(self) -> str:
        return f"{self.name} {self.version}".strip()

    def details(self) -> Dict[str, Any]:
        return {
            "package": self.name,
            "version": self.version,
            "architecture": self.architecture,
            **self.identity,
        }


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def valid_path(path: bytes) -> str | None:
    """Why `path` cannot be a path a package manager installed, or None when it can."""
    if not path.startswith(b"/"):
        return "not an absolute path"
    if b"\0" in path:
        return "a NUL byte in the path"
    if len(path) > 4096:
        return "a path longer than 4096 bytes"
    if any(part in (b"..", b".") for part in path.split(b"/")):
        return "a '.' or '..' component in the path"
    return None


def digest_matches(actual: str | None, expected: str) -> bool:
    if actual is None:
        return False
    if len(expected) < len(actual):
        return len(expected) >= 40 and actual.startswith(expected)
    return actual == expected
