"""Reading the Nix store database (`/nix/var/nix/db/db.sqlite`, table `ValidPaths`) and listing the
store directory, without writing a byte beside either.

The database is opened with `immutable=1`; when its write-ahead log (nix runs sqlite in WAL mode)
still holds transactions, a private copy of the database and its log is read instead, because an
immutable open would not see them. A damaged page hides the rows it held: the rest is read one row
at a time, and each unreadable run of rows is reported once."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from fsaudit.target import Target
from fsaudit_checks.nix import nar

DATABASE = b"/nix/var/nix/db/db.sqlite"
STORE = b"/nix/store"
# A store path's base name: 32 characters of nix base-32, a dash, then the name.
STORE_NAME = re.compile(rb"^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]{1,211}$")
MAX_STORE_ENTRIES = 10_000_000


@dataclass
class Damage:
    """A part of the database that cannot be used: which rows or what, and why."""

    where: str
    problem: str


@dataclass
class ValidPath:
    """One row of ValidPaths, checked: the store path (bytes), its NAR hash as recorded and as
    bytes, its NAR size, when it was registered, and its deriver."""

    id: int
    path: bytes
    recorded_hash: str
    algorithm: str
    digest: bytes
    nar_size: Optional[int]
    registered: Optional[float]
    deriver: str
    ca: str

    @property
    def name(self) -> str:
        """The name after the hash part (`bash-5.2-p15`)."""
        return os.fsdecode(self.path.rsplit(b"/", 1)[-1][33:])


def split_name(name: str) -> tuple:
    """(package name, version) the way nix's parseDrvName splits `bash-5.2-p15`: at the first dash
    followed by something that is not a letter."""
    for i, char in enumerate(name):
        if char == "-" and i + 1 < len(name) and not name[i + 1].isalpha():
            return name[:i], name[i + 1 :]
    return name, ""


def _row(row) -> Union[ValidPath, Damage]:
    ident, path, recorded, registered, deriver, nar_size, ca = row
    where = f"ValidPaths row {ident}"
    if not isinstance(path, str) or not path.startswith("/nix/store/"):
        return Damage(where, f"an impossible store path {str(path)[:120]!r}")
    raw = path.encode("utf-8", "surrogateescape")
    if raw.count(b"/") != 3 or not STORE_NAME.match(raw.rsplit(b"/", 1)[-1]):
        return Damage(where, f"an impossible store path {path[:120]!r}")
    try:
        algorithm, digest = nar.parse_hash(recorded if isinstance(recorded, str) else "")
        if algorithm != "sha256":
            raise ValueError(f"{algorithm} (nix records sha256)")
    except ValueError as error:
        return Damage(where, f"the NAR hash of {path} is unusable: {error}")
    if nar_size is not None and (not isinstance(nar_size, int) or nar_size < 0):
        return Damage(where, f"the NAR size of {path} is unusable: {str(nar_size)[:40]!r}")
    return ValidPath(
        id=ident,
        path=raw,
        recorded_hash=recorded,
        algorithm=algorithm,
        digest=digest,
        nar_size=nar_size,
        registered=float(registered) if isinstance(registered, int) else None,
        deriver=deriver if isinstance(deriver, str) else "",
        ca=ca if isinstance(ca, str) else "",
    )


class Database:
    """The store database of a target, open for reading."""

    COLUMNS = "id, path, hash, registrationTime, deriver, narSize, ca"

    def __init__(self, connection: sqlite3.Connection, private: bool):
        self.connection = connection
        self.private = private

    def paths(self) -> Iterator[Union[ValidPath, Damage]]:
        """Every row of ValidPaths in id order, a Damage for each row or run of rows unusable."""
        last = 0
        failure: Exception | None = None
        try:
            query = f"SELECT {self.COLUMNS} FROM ValidPaths ORDER BY id"
            for row in self.connection.execute(query):
                last = row[0]
                yield _row(row)
            return
        except sqlite3.Error as error:
            failure = error
        highest = self._highest()
        if highest is None:
            yield Damage("ValidPaths", f"the table cannot be read: {failure}")
            return
        gap = None
        for ident in range(last + 1, highest + 1):
            try:
                row = self.connection.execute(
                    f"SELECT {self.COLUMNS} FROM ValidPaths WHERE id = ?", (ident,)
                ).fetchone()
            except sqlite3.Error as error:
                failure = error
                gap = ident if gap is None else gap
                continue
            if gap is not None:
                yield _gap(gap, ident - 1, failure)
                gap = None
            if row is not None:
                yield _row(row)
        if gap is not None:
            yield _gap(gap, highest, failure)

    def _highest(self) -> Optional[int]:
        for query in (
            "SELECT max(id) FROM ValidPaths",
            "SELECT seq FROM sqlite_sequence WHERE name = 'ValidPaths'",
        ):
            try:
                row = self.connection.execute(query).fetchone()
                return int(row[0] or 0) if row else 0
            except (sqlite3.Error, TypeError, ValueError):
                continue
        return None

    def lookup(self, path: bytes) -> Union[ValidPath, Damage, None]:
        """The row of one store path (checked), None when the database does not list it; a Damage
        when the row or the database cannot be read."""
        try:
            row = self.connection.execute(
                f"SELECT {self.COLUMNS} FROM ValidPaths WHERE path = ?",
                (path.decode("utf-8", "surrogateescape"),),
            ).fetchone()
        except (sqlite3.Error, UnicodeEncodeError) as error:
            return Damage("ValidPaths", f"cannot be read: {error}")
        return None if row is None else _row(row)

    def registered(self, path: bytes) -> Optional[bool]:
        """Whether the database lists `path`; None when it cannot say (a damaged index)."""
        try:
            row = self.connection.execute(
                "SELECT 1 FROM ValidPaths WHERE path = ?", (path.decode("utf-8", "surrogateescape"),)
            ).fetchone()
        except (sqlite3.Error, UnicodeEncodeError):
            return None
        return row is not None


def _gap(first: int, last: int, error: Exception | None) -> Damage:
    where = f"ValidPaths row {first}" if first == last else f"ValidPaths rows {first} to {last}"
    return Damage(where, f"cannot be read: {error}")


@contextmanager
def open_database(target: Target) -> Iterator[Database]:
    """The store database, opened without writing beside it (see the module's docstring). Raises
    OSError or sqlite3.Error when it cannot be opened at all."""
    host = target.resolve(DATABASE)
    try:
        wal_size = target.lstat(DATABASE + b"-wal").st_size
    except OSError:
        wal_size = 0
    private = None
    try:
        if wal_size:
            private = tempfile.mkdtemp(prefix="fsaudit-nixdb-")
            copy = os.path.join(private, "db.sqlite")
            for source, destination in ((DATABASE, copy), (DATABASE + b"-wal", copy + "-wal")):
                with target.open(source) as handle, open(destination, "xb") as out:
                    shutil.copyfileobj(handle, out, 1 << 20)
            connection = sqlite3.connect(copy)
        else:
            uri = "file:" + urllib.parse.quote(os.fsdecode(host)) + "?mode=ro&immutable=1"
            connection = sqlite3.connect(uri, uri=True)
        try:
            # The header and schema are read here, so an unreadable file fails now, not later.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            yield Database(connection, private is not None)
        finally:
            connection.close()
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)


def store_names(target: Target) -> Iterator[bytes]:
    """The names in the store directory (bounded), in no particular order."""
    host = target.resolve(STORE)
    with os.scandir(host) as scan:
        for count, entry in enumerate(scan):
            if count >= MAX_STORE_ENTRIES:
                return
            yield os.fsencode(entry.name)
