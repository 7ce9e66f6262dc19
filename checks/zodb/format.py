"""The ZODB FileStorage format (Data.fs): layouts, tids, buffered reads, the oid map.

The layout (ZODB/FileStorage/format.py; identical for the `FS21` and `FS30` magics, which differ
only in the pickle protocol of the records):

    file        = magic(4) transaction*
    transaction = tid(8) tlen(8) status(1) ulen(2) dlen(2) elen(2) user descr ext record* tlen(8)
    record      = oid(8) tid(8) prev(8) tloc(8) vlen(2) plen(8) (pickle(plen) | back(8) when plen == 0)

`tlen` counts from the transaction's first byte to its redundant length (excluded). Every integer is
big-endian.
"""

from __future__ import annotations

import struct
import time
from array import array
from datetime import datetime, timezone
from typing import Dict, Iterator, Optional, Tuple

MAGICS = (b"FS21", b"FS30")
# oid, tid, position, pickle, back, current
RecordItem = Tuple[int, bytes, int, Optional[bytes], int, bool]
TXN_HEADER = struct.Struct(">8sQcHHH")
RECORD_HEADER = struct.Struct(">Q8sQQHQ")  # the oid as an integer
TXN_HEADER_LEN = TXN_HEADER.size  # 23
RECORD_HEADER_LEN = RECORD_HEADER.size  # 42
U64 = struct.Struct(">Q")
STATUSES = b" pu"
CHUNK = 8 << 20
# How far back pointers are followed before the chain is called a loop.
MAX_BACK_HOPS = 64
# How much of a damaged range is searched for the oids written there, and how many are named.
MAX_SCAN_FOR_OIDS = 64 << 20
MAX_LISTED_OIDS = 20
# Oids above this (relative to the records seen) are kept in a dict instead of the dense array;
# ZODB allocates oids sequentially, so only damage or odd imports produce sparse ones.
_DENSE_SLACK = 1 << 20


def p64(number: int) -> bytes:
    return U64.pack(number)


def u64(data: bytes) -> int:
    return U64.unpack(data)[0]


def hex_id(data: bytes) -> str:
    """An oid or tid as ZODB prints it: 0x followed by the significant hex digits."""
    return hex(u64(data))


def tid_time(tid: bytes) -> datetime | None:
    """The commit time a transaction id encodes (ZODB TimeStamp), or None when it is not a time."""
    minutes, fraction = struct.unpack(">II", tid)
    minute = minutes % 60
    hours = minutes // 60
    hour = hours % 24
    days = hours // 24
    day = days % 31 + 1
    months = days // 31
    month = months % 12 + 1
    year = months // 12 + 1900
    try:
        moment = datetime(year, month, day, hour, minute, tzinfo=timezone.utc)
    except ValueError:
        return None
    return moment.fromtimestamp(moment.timestamp() + fraction * 60.0 / (1 << 32), tz=timezone.utc)


def time_tid(moment: float) -> bytes:
    """The transaction id ZODB would give a commit at Unix time `moment`."""
    when = time.gmtime(moment)
    minutes = (
        (((when.tm_year - 1900) * 12 + when.tm_mon - 1) * 31 + when.tm_mday - 1) * 24 + when.tm_hour
    ) * 60
    minutes += when.tm_min
    seconds = moment % 60
    return struct.pack(">II", minutes, min(int(seconds / 60.0 * (1 << 32)), (1 << 32) - 1))


def tid_text(tid: bytes) -> str:
    moment = tid_time(tid)
    return moment.isoformat(timespec="seconds") if moment else "not a valid time"


class Reader:
    """Random and sequential reads of an open file through one large buffer."""

    def __init__(self, handle, size: int):
        self.handle = handle
        self.size = size
        self._buf = b""
        self._start = 0

    def read(self, pos: int, length: int) -> bytes:
        """Up to `length` bytes at `pos` (fewer at the end of the file)."""
        end = pos + length
        start = self._start
        if start <= pos and end <= start + len(self._buf):
            return self._buf[pos - start : end - start]
        if length > CHUNK:
            self.handle.seek(pos)
            return self.handle.read(length)
        self.handle.seek(pos)
        self._buf = self.handle.read(CHUNK)
        self._start = pos
        return self._buf[:length]

    def span(self, pos: int, length: int) -> Tuple[bytes, int]:
        """(buffer, buffer's file position) with the `length` bytes at `pos` in it, unless the file
        ends first; for loops that unpack in place instead of slicing."""
        start = self._start
        buf = self._buf
        if start <= pos and pos + length <= start + len(buf):
            return buf, start
        self.handle.seek(pos)
        self._buf = self.handle.read(max(CHUNK, length))
        self._start = pos
        return self._buf, pos


class OidMap:
    """oid -> (position of its current record, deleted) in flat memory.

    Oids are dense small integers in any real FileStorage, so they index an `array('Q')` holding
    `(pos + 1) << 1 | deleted`; the few that are not go into a dict.
    """

    def __init__(self):
        self.dense = array("Q")
        self.sparse: Dict[int, int] = {}
        self.records = 0
        self.count = 0  # oids that have a current record

    def set(self, oid: int, pos: int, deleted: bool) -> None:
        value = ((pos + 1) << 1) | int(deleted)
        dense = self.dense
        if not self.raw(oid):
            self.count += 1
        if oid < len(dense):
            dense[oid] = value
            return
        if oid < len(dense) + _DENSE_SLACK + 4 * self.records:
            dense.frombytes(bytes(8 * (oid + 1 - len(dense))))
            # Oids that were sparse until now belong in the array: lookups only look there.
            for moved in [other for other in self.sparse if other < len(dense)]:
                dense[moved] = self.sparse.pop(moved)
            dense[oid] = value
            return
        self.sparse[oid] = value

    def raw(self, oid: int) -> int:
        if oid < len(self.dense):
            return self.dense[oid]
        return self.sparse.get(oid, 0)

    def get(self, oid: int) -> Tuple[int, bool] | None:
        """(position, deleted) of the current record of `oid`, or None when it has none."""
        value = self.raw(oid)
        if not value:
            return None
        return (value >> 1) - 1, bool(value & 1)

    def position(self, oid: int) -> int:
        """Position of the current record, or -1."""
        value = self.raw(oid)
        return (value >> 1) - 1 if value else -1

    def __len__(self) -> int:
        return self.count

    def items(self) -> Iterator[Tuple[int, int, bool]]:
        for oid, value in enumerate(self.dense):
            if value:
                yield oid, (value >> 1) - 1, bool(value & 1)
        for oid in sorted(self.sparse):
            value = self.sparse[oid]
            yield oid, (value >> 1) - 1, bool(value & 1)
