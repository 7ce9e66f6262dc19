"""The RPM package database inside an image: found, recognised by content, and read without writing.

Three on-disk formats exist. `rpmdb.sqlite` (rpm 4.16+) is opened with `immutable=1`, or from a
private copy when its write-ahead log holds transactions, so no `-wal`/`-shm` file ever appears in the
image. The Berkeley DB hash `Packages` file (EL7/EL8, Amazon Linux 2, older SUSE) is read here in
pure Python from its on-disk hash format. The NDB `Packages.db` (SUSE) is recognised and reported as
unsupported. Each reader yields `Record`s (a header blob and its key) and `Damage` for what it could
not read, and carries on past damage.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import urllib.parse
from dataclasses import dataclass, field
from typing import Iterator, List, Tuple, Union

from fsaudit.target import Target

DEFAULT_DBPATHS = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
SQLITE_MAGIC = b"SQLite format 3\0"
HASH_MAGIC = 0x061561
NDB_MAGIC = b"RpmP"


@dataclass
class Record:
    """One package header blob and the key it is stored under (the rpm header instance)."""

    key: int
    blob: bytes


@dataclass
class Damage:
    """Part of the database that could not be read: where, and what was wrong."""

    where: str
    message: str
    key: int | None = None


@dataclass
class Database:
    """A package database found in the target: its format and the path of its file inside the root."""

    kind: str  # "sqlite", "bdb" or "ndb"
    path: bytes
    mtime: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return os.fsdecode(self.path)


def _sniff(target: Target, path: bytes) -> str | None:
    """The database format of the file at `path`, by its content (None when it is none of them)."""
    try:
        head = target.read_bytes(path, limit=512)
    except OSError:
        return None
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(NDB_MAGIC):
        return "ndb"
    if len(head) >= 26:
        for order in "<>":
            (magic,) = struct.unpack_from(order + "I", head, 12)
            if magic == HASH_MAGIC:
                return "bdb"
    return "unknown"


_FILES = ((b"rpmdb.sqlite", "sqlite"), (b"Packages", "bdb"), (b"Packages.db", "ndb"))


def find_databases(target: Target, dbpaths=DEFAULT_DBPATHS) -> List[Database]:
    """Every package database file under the candidate directories, newest first.

    Directories are resolved inside the root (Fedora's `/var/lib/rpm` is a link to
    `/usr/lib/sysimage/rpm`), so the same file is listed once. A file with the expected name but not
    the expected content is listed with kind "unknown": it is damaged, not absent.
    """
    found = {}
    for directory in dbpaths:
        directory = os.fsencode(directory).rstrip(b"/")
        for name, _expected in _FILES:
            path = directory + b"/" + name
            try:
                st = target.stat(path)
                host = target.resolve(path)
            except OSError:
                continue
            if host in found:
                continue
            kind = _sniff(target, path)
            if kind is None:
                continue
            found[host] = Database(kind, path, st.st_mtime, {"expected": _expected})
    return sorted(found.values(), key=lambda db: -db.mtime)


# -- SQLite ------------------------------------------------------------------------------------------


class SqliteReader:
    """Reads `Packages(hnum, blob)` from rpmdb.sqlite without writing beside it."""

    def __init__(self, target: Target, path: bytes):
        self.target = target
        self.path = path
        self.private_copy: str | None = None

    def _connect(self) -> sqlite3.Connection:
        host = self.target.resolve(self.path)
        wal = self.path + b"-wal"
        try:
            wal_size = self.target.lstat(wal).st_size
        except OSError:
            wal_size = 0
        if wal_size:
            # Transactions still in the log are invisible to an immutable open: read a private copy
            # of the database and its log instead (sqlite may write freely beside the copy).
            import tempfile  # here: only a database with a log needs it (2 ms of every start)

            self.private_copy = tempfile.mkdtemp(prefix="fsaudit-rpmdb-")
            copy = os.path.join(self.private_copy, "rpmdb.sqlite")
            self._copy(self.path, copy)
            self._copy(wal, copy + "-wal")
            return sqlite3.connect(copy)
        uri = "file:" + urllib.parse.quote(os.fsdecode(host)) + "?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True)

    def _copy(self, path: bytes, destination: str) -> None:
        import shutil

        with self.target.open(path) as source, open(destination, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)

    def records(self) -> Iterator[Union[Record, Damage]]:
        try:
            connection = self._connect()
        except (OSError, sqlite3.Error) as error:
            yield Damage("database", f"cannot open the database: {error}")
            return
        try:
            yield from self._rows(connection)
        finally:
            connection.close()
            if self.private_copy:
                import shutil

                shutil.rmtree(self.private_copy, ignore_errors=True)

    def _rows(self, connection: sqlite3.Connection) -> Iterator[Union[Record, Damage]]:
        highest = self._highest(connection)
        if highest is None:
            yield Damage("Packages table", "neither the table nor its sequence can be read")
            return
        last = 0
        try:
            for hnum, blob in connection.execute("SELECT hnum, blob FROM Packages ORDER BY hnum"):
                last = hnum
                yield self._record(hnum, blob)
            return
        except sqlite3.Error as error:
            failure = error
        # A damaged b-tree page hides the rows it held. Read the rest one record at a time, so every
        # row the damage spared is still verified, and report each unreadable run once.
        gap_start = None
        reported = False
        for hnum in range(last + 1, highest + 1):
            try:
                row = connection.execute("SELECT blob FROM Packages WHERE hnum = ?", (hnum,)).fetchone()
            except sqlite3.Error as error:
                failure = error
                gap_start = hnum if gap_start is None else gap_start
                continue
            if gap_start is not None:
                yield self._gap(gap_start, hnum - 1, failure)
                gap_start, reported = None, True
            if row is not None:
                yield self._record(hnum, row[0])
        if gap_start is not None:
            yield self._gap(gap_start, highest, failure)
        elif not reported:
            yield Damage(
                "Packages table", f"the table cannot be scanned ({failure}); its records were read one by one"
            )

    @staticmethod
    def _highest(connection: sqlite3.Connection) -> int | None:
        """The highest record number: from the table, else from its AUTOINCREMENT sequence."""
        for query in (
            "SELECT max(hnum) FROM Packages",
            "SELECT seq FROM sqlite_sequence WHERE name = 'Packages'",
        ):
            try:
                row = connection.execute(query).fetchone()
                return int(row[0] or 0) if row else 0
            except (sqlite3.Error, TypeError, ValueError):
                continue
        return None

    @staticmethod
    def _record(hnum: int, blob) -> Union[Record, Damage]:
        if not isinstance(blob, bytes):
            return Damage(f"package record {hnum}", "the header is not a blob", key=hnum)
        return Record(hnum, blob)

    @staticmethod
    def _gap(first: int, last: int, error: Exception) -> Damage:
        where = f"package record {first}" if first == last else f"package records {first} to {last}"
        return Damage(where, f"cannot be read: {error}", key=first)


# -- Berkeley DB hash ----------------------------------------------------------------------------------

P_HASH_UNSORTED = 2
P_OVERFLOW = 7
P_HASHMETA = 8
P_HASH = 13
H_KEYDATA = 1
H_OFFPAGE = 3
PAGE_HEADER = 26
MAX_PAGE_SIZE = 65536


class PageError(ValueError):
    """A page that is not what the hash structure says it should be."""


class BdbHashReader:
    """Reads key/data pairs from a Berkeley DB hash file (rpm's legacy `Packages`) in pure Python.

    The metadata page gives the page size, the byte order, the highest bucket and the `spares`
    table that maps buckets to pages. Each bucket is a chain of hash pages; big items live on chains
    of overflow pages. Every page is checked (its own page number, type, item offsets) and every
    chain is bounded, so a damaged page costs only what it held.
    """

    def __init__(self, target: Target, path: bytes):
        self.target = target
        self.path = path
        self.handle = None
        self.page_size = 0
        self.order = "<"
        self.last_pgno = 0
        self.nelem = 0

    def _page(self, pgno: int) -> bytes:
        if pgno > self.last_pgno:
            raise PageError(f"page {pgno} is past the last page ({self.last_pgno})")
        self.handle.seek(pgno * self.page_size)
        page = self.handle.read(self.page_size)
        if len(page) != self.page_size:
            raise PageError(f"page {pgno} is cut short by the end of the file")
        (own,) = struct.unpack_from(self.order + "I", page, 8)
        if own != pgno:
            raise PageError(f"page {pgno} says it is page {own}")
        return page

    def _meta(self) -> Tuple[int, List[int]]:
        self.handle.seek(0)
        head = self.handle.read(512)
        if len(head) < 224:
            raise PageError("the metadata page is cut short")
        for order in "<>":
            if struct.unpack_from(order + "I", head, 12)[0] == HASH_MAGIC:
                self.order = order
                break
        else:
            raise PageError("the metadata page has no hash magic")
        version, page_size = struct.unpack_from(self.order + "II", head, 16)
        encrypted, kind = head[24], head[25]
        if kind != P_HASHMETA:
            raise PageError(f"the metadata page has type {kind}")
        if encrypted:
            raise PageError("the database is encrypted")
        if page_size < 512 or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
            raise PageError(f"the metadata page gives an impossible page size {page_size}")
        self.page_size = page_size
        size = os.fstat(self.handle.fileno()).st_size
        (self.last_pgno,) = struct.unpack_from(self.order + "I", head, 32)
        self.last_pgno = min(self.last_pgno, size // page_size - 1)
        max_bucket, _high, _low, _ffactor, self.nelem = struct.unpack_from(self.order + "5I", head, 72)
        spares = list(struct.unpack_from(self.order + "32I", head, 96))
        if max_bucket > self.last_pgno:
            raise PageError(
                f"the metadata page claims {max_bucket + 1} buckets in {self.last_pgno + 1} pages"
            )
        return max_bucket, spares

    def records(self) -> Iterator[Union[Record, Damage]]:
        try:
            self.handle = self.target.open(self.path)
        except OSError as error:
            yield Damage("database", f"cannot open the database: {error}")
            return
        with self.handle:
            try:
                max_bucket, spares = self._meta()
            except PageError as error:
                yield Damage("metadata page", str(error))
                return
            for bucket in range(max_bucket + 1):
                pgno = bucket + spares[(bucket).bit_length() if bucket else 0]
                yield from self._bucket(bucket, pgno)

    def _bucket(self, bucket: int, pgno: int) -> Iterator[Union[Record, Damage]]:
        seen = set()
        while pgno:
            if pgno in seen or len(seen) > self.last_pgno:
                yield Damage(f"bucket {bucket}", f"the chain of hash pages loops at page {pgno}")
                return
            seen.add(pgno)
            try:
                page = self._page(pgno)
                kind = page[25]
                if kind not in (P_HASH, P_HASH_UNSORTED):
                    raise PageError(f"page {pgno} of bucket {bucket} has type {kind}, not a hash page")
                items = self._items(page, pgno)
            except PageError as error:
                yield Damage(f"page {pgno}", str(error))
                return
            for index in range(0, len(items) - 1, 2):
                yield self._pair(pgno, items[index], items[index + 1])
            (pgno,) = struct.unpack_from(self.order + "I", page, 16)

    def _items(self, page: bytes, pgno: int) -> List[bytes]:
        (entries,) = struct.unpack_from(self.order + "H", page, 20)
        if entries % 2 or PAGE_HEADER + 2 * entries > self.page_size:
            raise PageError(f"page {pgno} claims {entries} items")
        offsets = struct.unpack_from(f"{self.order}{entries}H", page, PAGE_HEADER)
        items = []
        end = self.page_size
        for offset in offsets:
            if offset < PAGE_HEADER + 2 * entries or offset >= end:
                raise PageError(f"page {pgno} has an item offset {offset} out of place")
            items.append(page[offset:end])
            end = offset
        return items

    def _pair(self, pgno: int, key_item: bytes, data_item: bytes) -> Union[Record, Damage]:
        try:
            key = self._value(key_item)
        except PageError as error:
            return Damage(f"page {pgno}", f"a key cannot be read: {error}")
        if len(key) != 4:
            return Damage(f"page {pgno}", f"a key of {len(key)} bytes is not a record number")
        (number,) = struct.unpack(self.order + "I", key)
        try:
            data = self._value(data_item)
        except PageError as error:
            return Damage(f"package record {number}", str(error), key=number)
        return Record(number, data)

    def _value(self, item: bytes) -> bytes:
        kind = item[0]
        if kind == H_KEYDATA:
            return item[1:]
        if kind == H_OFFPAGE and len(item) >= 12:
            pgno, length = struct.unpack_from(self.order + "II", item, 4)
            return self._overflow(pgno, length)
        raise PageError(f"item type {kind} is not one rpm writes")

    def _overflow(self, pgno: int, length: int) -> bytes:
        if length > (self.last_pgno + 1) * self.page_size:
            raise PageError(f"an overflow item claims {length} bytes, more than the file holds")
        parts = []
        total = 0
        hops = 0
        while pgno and total < length:
            hops += 1
            if hops > self.last_pgno + 1:
                raise PageError("the overflow chain loops")
            page = self._page(pgno)
            if page[25] != P_OVERFLOW:
                raise PageError(f"overflow page {pgno} has type {page[25]}")
            (used,) = struct.unpack_from(self.order + "H", page, 22)
            if used > self.page_size - PAGE_HEADER:
                raise PageError(f"overflow page {pgno} claims {used} bytes")
            parts.append(page[PAGE_HEADER : PAGE_HEADER + used])
            total += used
            (pgno,) = struct.unpack_from(self.order + "I", page, 16)
        if total != length:
            raise PageError(f"the overflow chain holds {total} of {length} bytes")
        return b"".join(parts)


def reader_for(target: Target, database: Database):
    """The reader of `database`'s format, or None for a format fsaudit cannot read."""
    if database.kind == "sqlite":
        return SqliteReader(target, database.path)
    if database.kind == "bdb":
        return BdbHashReader(target, database.path)
    return None
