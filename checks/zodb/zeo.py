"""Checking a storage through a read-only ZEO client: every object reachable from the root must load
and parse, and every object it references must exist."""

from __future__ import annotations

from array import array
from typing import Iterator, Tuple, Union

from fsaudit_checks.zodb.format import hex_id, p64, u64
from fsaudit_checks.zodb.pickle import RecordParser, UnreadablePickle, memory_ceiling
from fsaudit_checks.zodb.walk import Problem

Address = Union[str, Tuple[str, int]]


class ZeoUnreachable(Exception):
    """The ZEO server could not be reached or stopped answering."""


def parse_address(text: str) -> Address:
    """`host:port`, `[v6addr]:port` or a Unix socket path."""
    text = text.strip()
    if text.startswith("/"):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port or a socket path, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Bitmap:
    """A growable set of small integers, one bit each."""

    def __init__(self):
        self.bits = bytearray()

    def add(self, number: int) -> bool:
        """Add `number`; True when it was not there yet."""
        index, bit = divmod(number, 8)
        if index >= len(self.bits):
            self.bits.extend(bytes(index + 1 - len(self.bits) + len(self.bits) // 2))
        mask = 1 << bit
        if self.bits[index] & mask:
            return False
        self.bits[index] |= mask
        return True


class ZeoWalk:
    """Walk a ZEO storage from its root object; `problems()` yields what is wrong."""

    def __init__(self, address: Address, storage: str = "1", timeout: float = 30.0):
        self.address = address
        self.storage_name = storage
        self.timeout = timeout
        self.objects = 0
        self.references = 0
        self.foreign = 0
        self.last_tid: bytes | None = None
        # Oids above this are not reachable from a dense oid space: the bitmap would be huge.
        self.max_oid = 1 << 36

    def problems(self) -> Iterator[Problem]:
        from ZEO.ClientStorage import ClientStorage
        from ZEO.Exceptions import ClientDisconnected

        try:
            storage = ClientStorage(
                self.address, storage=self.storage_name, read_only=True, wait_timeout=self.timeout
            )
        except ClientDisconnected as error:
            raise ZeoUnreachable(f"cannot connect: {error}") from None
        except Exception as error:  # noqa: BLE001 - ZEO raises many kinds at connect time
            raise ZeoUnreachable(f"{type(error).__name__}: {error}") from None
        try:
            self.last_tid = storage.lastTransaction()
            yield from self._traverse(storage, ClientDisconnected)
        finally:
            storage.close()

    def _load(self, storage, oid: bytes) -> Tuple[bytes | None, bytes | None, str | None]:
        """(data, serial, None), (None, None, None) when the object does not exist, or
        (None, None, why) when the server fails to load it."""
        from ZODB.POSException import POSKeyError
        from ZODB.utils import maxtid

        try:
            found = storage.loadBefore(oid, maxtid)
        except POSKeyError:
            return None, None, None
        if found is None:
            return None, None, None
        return found[0], found[1], None

    def _traverse(self, storage, disconnected) -> Iterator[Problem]:
        parser = RecordParser()
        seen = _Bitmap()
        seen.add(0)
        # Pairs: oid, referrer + 1 (0 for the root, which nothing references).
        stack = array("Q", [0, 0])
        while stack:
            referrer_plus_one = stack.pop()
            oid_int = stack.pop()
            oid = p64(oid_int)
            referrer = p64(referrer_plus_one - 1) if referrer_plus_one else None
            try:
                data, serial, why = self._load(storage, oid)
            except disconnected as error:
                raise ZeoUnreachable(f"the server went away: {error}") from None
            except Exception as error:  # noqa: BLE001 - the server's load failed: damage
                yield Problem(
                    "unreadable-record",
                    -1,
                    f"oid {hex_id(oid)} cannot be loaded through ZEO: {type(error).__name__}: {error}"[:500],
                    oid=oid,
                )
                continue
            if data is None:
                yield self._dangling(oid, referrer)
                continue
            self.objects += 1
            try:
                with memory_ceiling(1 << 30):
                    _meta, refs, foreign = parser.references(data)
            except UnreadablePickle as error:
                yield Problem(
                    "unreadable-record",
                    -1,
                    f"the pickle of oid {hex_id(oid)} is damaged: {error}",
                    tid=serial,
                    oid=oid,
                )
                continue
            self.foreign += foreign
            self.references += len(refs)
            for ref in refs:
                ref_int = u64(ref)
                if ref_int > self.max_oid:
                    yield self._dangling(ref, oid)
                    continue
                if seen.add(ref_int):
                    stack.append(ref_int)
                    stack.append(oid_int + 1)

    @staticmethod
    def _dangling(oid: bytes, referrer: bytes | None) -> Problem:
        if referrer is None:
            return Problem("root-missing", -1, "the storage has no root object (oid 0x0)", oid=oid)
        return Problem(
            "dangling-reference",
            -1,
            f"oid {hex_id(referrer)} references oid {hex_id(oid)}, which does not exist",
            oid=referrer,
            details={"missing": [hex_id(oid)]},
        )
