"""A read-only, resynchronising walk over a FileStorage (see `zodb_format` for the layout).

The walk never uses ZODB itself: ZODB's FileStorage takes a lock file, and a read-write open
truncates a damaged tail.

Pass one (`walk`) checks every header, both lengths, the status, every record's tid, transaction
position and previous-record pointer, and resynchronises after damage on the next transaction whose
header and redundant length agree; it records, per oid, the position of the current record. Pass two
(`iter_records`) reads only the current records, in file order, for the reference check.
"""

from __future__ import annotations

import bisect
import os
import re
import time
from array import array
from dataclasses import dataclass, field
from typing import Iterator, List, Tuple

from fsaudit_checks.zodb.format import (
    CHUNK,
    MAGICS,
    MAX_BACK_HOPS,
    MAX_LISTED_OIDS,
    MAX_SCAN_FOR_OIDS,
    RECORD_HEADER,
    RECORD_HEADER_LEN,
    STATUSES,
    TXN_HEADER,
    TXN_HEADER_LEN,
    U64,
    OidMap,
    Reader,
    RecordItem,
    hex_id,
    p64,
    tid_time,
    time_tid,
    u64,
)


@dataclass
class Problem:
    """One piece of damage the walk found."""

    code: str
    pos: int
    message: str
    tid: bytes | None = None
    oid: bytes | None = None
    details: dict = field(default_factory=dict)


@dataclass
class Transaction:
    pos: int
    end: int  # position of the redundant length
    tid: bytes
    status: bytes
    data_start: int


class Walk:
    """Pass one over a FileStorage: structure, lengths, chains; the current record of every oid."""

    def __init__(self, handle, size: int, now: float | None = None, window=None):
        self.reader = Reader(handle, size)
        self.window = window
        # Called now and then with the number of bytes walked so far (progress display).
        self.on_progress = None
        self.in_window = 0
        self.first_in_window: bytes | None = None
        self.size = size
        self.magic = b""
        self.current = OidMap()
        # Accepted transactions, in file order: start, end (of data), data start.
        self.txn_pos = array("Q")
        self.txn_end = array("Q")
        self.txn_data = array("Q")
        self.txn_status = bytearray()
        self.transactions = 0
        self.records = 0
        self.max_plen = 0  # the longest pickle of an accepted record
        self.first_tid: bytes | None = None
        self.last_tid: bytes | None = None
        self.end_pos = 4  # end of the last accepted transaction (with its redundant length)
        self.unreachable: List[Tuple[int, int]] = []
        self.backs = array("Q")  # record position, back pointer: pairs to verify
        self.max_tid = max(time_tid((now if now is not None else time.time()) + 86400), self._tail_tid())

    # -- the walk --------------------------------------------------------------------------------

    def walk(self) -> Iterator[Problem]:
        read = self.reader.read
        self.magic = read(0, 4)
        if not self.size:
            yield Problem("bad-magic", 0, "the file is empty: even a new FileStorage holds its 4-byte magic")
            return
        if self.magic not in MAGICS:
            yield Problem("bad-magic", 0, f"the file does not start with a FileStorage magic: {self.magic!r}")
            start = self._resync(4, b"\0" * 8)
            if start is None:
                return
            self.unreachable.append((0, start))
            yield self._unreachable_problem(0, start, None)
            pos = start
        else:
            pos = 4
        ltid = b"\0" * 8
        size = self.size
        while pos < size:
            outcome = self._transaction(pos, ltid)
            if isinstance(outcome, Transaction):
                for problem in self._pending:
                    yield problem
                self._accept(outcome)
                ltid = outcome.tid
                pos = outcome.end + 8
                continue
            problem = outcome
            start = self._resync(pos + 1, ltid)
            if start is None:
                if problem.code == "checkpoint-transaction":
                    yield problem
                    return
                torn, torn_tid = self._looks_torn(pos, ltid)
                if torn and self._grew():
                    # A commit in progress on a live storage, not a lost tail.
                    yield Problem(
                        "checkpoint-transaction",
                        pos,
                        f"the transaction at offset {pos} was still being written while the file was read",
                        tid=torn_tid,
                    )
                    return
                if torn:
                    problem = Problem(
                        "truncated-transaction",
                        pos,
                        f"the file ends inside the transaction at offset {pos}: its end was lost "
                        f"({size - pos} bytes of a partly written transaction)",
                        tid=torn_tid,
                    )
                yield problem
                self.unreachable.append((pos, size))
                if not torn:
                    yield self._unreachable_problem(pos, size, ltid)
                return
            yield problem
            self.unreachable.append((pos, start))
            yield self._unreachable_problem(pos, start, ltid)
            pos = start

    def _grew(self) -> bool:
        try:
            return os.fstat(self.reader.handle.fileno()).st_size > self.size
        except (OSError, AttributeError, ValueError):
            return False

    def _unreachable_problem(self, start: int, end: int, ltid: bytes | None) -> Problem:
        oids = self._oids_in(start, end, ltid or b"\0" * 8)
        return Problem(
            "unreachable-range",
            start,
            f"bytes {start}..{end} ({end - start} bytes) are not part of any readable transaction: "
            "the objects written there are lost to ZODB"
            + (f"; objects written there include oid {', '.join(oids[:5])}" if oids else ""),
            tid=ltid if ltid and ltid != b"\0" * 8 else None,
            details={"start": start, "end": end, "length": end - start, "oids_written_there": oids},
        )

    def _oids_in(self, start: int, end: int, ltid: bytes) -> List[str]:
        """Oids of what still looks like data records in a damaged range (a few, for the advice):
        a tid after the last good one, a transaction position inside the range, no version."""
        pattern = self._record_pattern(ltid)
        found: List[str] = []
        handle = self.reader.handle
        pos = start
        limit = min(end, start + MAX_SCAN_FOR_OIDS)
        while pos < limit and len(found) < MAX_LISTED_OIDS:
            handle.seek(pos)
            chunk = handle.read(min(CHUNK, limit - pos + RECORD_HEADER_LEN))
            for match in pattern.finditer(chunk):
                if match.start() + RECORD_HEADER_LEN > len(chunk):
                    break
                oid, tid, prev, tloc, _, plen = RECORD_HEADER.unpack_from(chunk, match.start())
                here = pos + match.start()
                if start - TXN_HEADER_LEN <= tloc < here and prev < here and ltid < tid <= self.max_tid:
                    if hex(oid) not in found:
                        found.append(hex(oid))
                    if len(found) >= MAX_LISTED_OIDS:
                        break
            if len(chunk) < CHUNK:
                break
            pos += len(chunk) - RECORD_HEADER_LEN
        return found

    def _record_pattern(self, ltid: bytes) -> re.Pattern:
        """Candidate data record headers: a plausible tid at offset 8, a position below 2^40 at 24,
        a zero version length at 32."""
        return re.compile(b"(?=.{8}" + self._tid_regex(ltid) + b".{8}\x00\x00\x00.{5}\x00\x00)", re.DOTALL)

    def _looks_torn(self, pos: int, ltid: bytes) -> Tuple[bool, bytes | None]:
        """Whether a transaction starts plausibly at `pos` but runs past the end of the file, and
        its tid when the file still holds it."""
        header = self.reader.read(pos, TXN_HEADER_LEN)
        if len(header) < 8:
            return True, None
        tid = header[:8]
        if not (ltid < tid <= self.max_tid):
            return False, None
        if len(header) < TXN_HEADER_LEN:
            return True, tid
        _, tlen, status, _, _, _ = TXN_HEADER.unpack(header)
        return status in STATUSES + b"c" and pos + tlen + 8 > self.size, tid

    def _accept(self, txn: Transaction) -> None:
        self.transactions += 1
        self.txn_pos.append(txn.pos)
        self.txn_end.append(txn.end)
        self.txn_data.append(txn.data_start)
        self.txn_status.append(txn.status[0])
        if self.first_tid is None:
            self.first_tid = txn.tid
        self.last_tid = txn.tid
        self.end_pos = txn.end + 8
        if self.on_progress is not None and not self.transactions % 256:
            self.on_progress(self.end_pos)
        if self.window is not None:
            moment = tid_time(txn.tid)
            if moment is not None and self.window.contains(moment.timestamp()):
                self.in_window += 1
                self.first_in_window = self.first_in_window or txn.tid

    def is_boundary(self, pos: int) -> bool:
        """Whether an accepted transaction starts at `pos`."""
        index = bisect.bisect_left(self.txn_pos, pos)
        return index < len(self.txn_pos) and self.txn_pos[index] == pos

    def _transaction(self, pos: int, ltid: bytes):
        """The transaction at `pos` (a Transaction, with its problems in `self._pending`) or the
        Problem that makes it unreadable."""
        self._pending: List[Problem] = []
        header = self.reader.read(pos, TXN_HEADER_LEN)
        if len(header) < TXN_HEADER_LEN:
            return Problem(
                "truncated-transaction", pos, f"the file ends inside a transaction header at {pos}"
            )
        tid, tlen, status, ulen, dlen, elen = TXN_HEADER.unpack(header)
        data_start = pos + TXN_HEADER_LEN + ulen + dlen + elen
        if tid <= ltid:
            return Problem(
                "transaction-damaged",
                pos,
                f"transaction header at {pos} is damaged: its tid {hex_id(tid)} is not after the "
                f"previous one {hex_id(ltid)}",
                tid=tid,
            )
        if tid > self.max_tid:
            return Problem(
                "transaction-damaged",
                pos,
                f"transaction header at {pos} is damaged: tid {hex_id(tid)} is a time in the future",
                tid=tid,
            )
        if status not in STATUSES:
            if status == b"c" and pos + tlen + 8 == self.size:
                return Problem(
                    "checkpoint-transaction",
                    pos,
                    f"the last transaction (at {pos}) was never finished (status 'c'): ZODB discards it",
                    tid=tid,
                )
            return Problem(
                "transaction-damaged",
                pos,
                f"transaction header at {pos} is damaged: invalid status {status!r}",
                tid=tid,
            )
        tend = pos + tlen
        tlen_plausible = data_start <= tend and tend + 8 <= self.size
        if status == b"u":
            # An undone transaction's records are ignored by ZODB; only its lengths matter.
            if tlen_plausible and self._length_at(tend) == tlen:
                return Transaction(pos, tend, tid, status, data_start)
            return Problem(
                "transaction-damaged",
                pos,
                f"undone transaction at {pos}: header and redundant lengths disagree",
                tid=tid,
            )
        if data_start > self.size:
            return Problem(
                "truncated-transaction", pos, f"the file ends inside a transaction header at {pos}"
            )
        records, stop, bad = self._records(pos, tid, data_start)
        trailer = self._length_at(stop)
        if stop == tend and tlen_plausible:
            if trailer != tlen:
                self._pending.append(
                    Problem(
                        "length-mismatch",
                        tend,
                        f"the redundant length of the transaction at {pos} is damaged "
                        f"({trailer} instead of {tlen}); the records themselves are intact",
                        tid=tid,
                        details={"header_length": tlen, "redundant_length": trailer},
                    )
                )
        elif trailer is not None and trailer == stop - pos and stop >= data_start:
            self._pending.append(
                Problem(
                    "length-mismatch",
                    pos,
                    f"the length in the header of the transaction at {pos} is damaged ({tlen} instead "
                    f"of {stop - pos}): ZODB stops reading the file here, so every later transaction "
                    "is invisible to it",
                    tid=tid,
                    details={"header_length": tlen, "redundant_length": trailer},
                )
            )
            tend = stop
        else:
            where = bad if bad is not None else stop
            if where > data_start or records:
                return Problem(
                    "record-damaged",
                    where,
                    f"data record at {where} in the transaction at {pos} is damaged; the transaction "
                    f"wrote {len(records)} readable record(s) before it, which ZODB cannot use either",
                    tid=tid,
                    details={
                        "transaction_offset": pos,
                        "oids_in_transaction": [hex(record[1]) for record in records[:20]],
                    },
                )
            return Problem(
                "transaction-damaged",
                pos,
                f"transaction at {pos} is damaged: its length {tlen} matches neither its records "
                "nor its redundant length",
                tid=tid,
            )
        self._link(records, tid)
        return Transaction(pos, tend, tid, status, data_start)

    def _length_at(self, pos: int) -> int | None:
        data = self.reader.read(pos, 8)
        return u64(data) if len(data) == 8 else None

    def _records(self, tpos: int, tid: bytes, pos: int) -> Tuple[list, int, int | None]:
        """Walk the data records of the transaction at `tpos` from `pos` for as long as they are
        plausible: (records as (pos, oid, prev, plen, back) tuples, where the walk stopped, position
        of a damaged record or None)."""
        span = self.reader.span
        unpack_from = RECORD_HEADER.unpack_from
        u64_from = U64.unpack_from
        size = self.size
        records = []
        buf, base = span(pos, RECORD_HEADER_LEN + 8)
        buf_end = base + len(buf)
        while True:
            if pos + RECORD_HEADER_LEN + 8 > buf_end:
                buf, base = span(pos, RECORD_HEADER_LEN + 8)
                buf_end = base + len(buf)
                if pos + RECORD_HEADER_LEN > buf_end:
                    return records, pos, None
            offset = pos - base
            oid, rtid, prev, tloc, vlen, plen = unpack_from(buf, offset)
            if rtid != tid or tloc != tpos:
                # Not a record of this transaction: its end (or damage, decided by the caller).
                bad = pos if (rtid == tid) != (tloc == tpos) else None
                return records, pos, bad
            end = pos + RECORD_HEADER_LEN + (plen or 8)
            if vlen or end + 8 > size or prev >= pos:
                return records, pos, pos
            back = 0
            if not plen:
                back = u64_from(buf, offset + RECORD_HEADER_LEN)[0]
                if back >= pos:
                    return records, pos, pos
            records.append((pos, oid, prev, plen, back))
            pos = end

    def _link(self, records: list, tid: bytes) -> None:
        """Check each record's previous-record pointer against the walk and make it current."""
        current = self.current
        dense = current.dense
        dense_len = len(dense)
        sparse = current.sparse
        for pos, oid, prev, plen, back in records:
            if plen > self.max_plen:
                self.max_plen = plen
            value = dense[oid] if oid < dense_len else sparse.get(oid, 0)
            expected = (value >> 1) - 1 if value else 0
            if prev != expected and not self._in_unreachable(prev):
                self._pending.append(
                    Problem(
                        "prev-chain-broken",
                        pos,
                        f"record of oid {hex(oid)} at {pos} points to a previous revision at {prev}, "
                        "but the previous revision in the file is "
                        + (f"at {expected}" if expected else "none"),
                        tid=tid,
                        oid=p64(oid),
                        details={"prev": prev, "expected_prev": expected},
                    )
                )
            if back:
                self.backs.append(pos)
                self.backs.append(back)
            deleted = not plen and not back
            if oid < dense_len:
                if not value:
                    current.count += 1
                dense[oid] = ((pos + 1) << 1) | deleted
            else:
                current.set(oid, pos, deleted)
                dense_len = len(dense)
            current.records += 1
        self.records += len(records)

    def _in_unreachable(self, pos: int) -> bool:
        return any(start <= pos < end for start, end in self.unreachable)

    # -- resynchronisation -------------------------------------------------------------------------

    def _tail_tid(self) -> bytes:
        """The tid of the last transaction when the file's tail is intact (bounds plausible tids)."""
        size = self.reader.size
        if size < 4 + TXN_HEADER_LEN + 8:
            return b"\0" * 8
        length = self._length_at(size - 8)
        start = size - 8 - (length or 0)
        if length is None or start < 4:
            return b"\0" * 8
        header = self.reader.read(start, TXN_HEADER_LEN)
        if len(header) == TXN_HEADER_LEN and TXN_HEADER.unpack(header)[1] == length:
            return header[:8]
        return b"\0" * 8

    def _tid_regex(self, ltid: bytes) -> bytes:
        """A regular expression for 8 bytes that may be a tid after `ltid` (and not in the future)."""
        high = self.max_tid
        prefix = b""
        for a, b in zip(ltid, high):
            if a != b:
                break
            prefix += bytes([a])
        if len(prefix) >= 8:
            prefix = prefix[:7]
        low_byte, high_byte = ltid[len(prefix)], high[len(prefix)]
        rest = 8 - len(prefix) - 1
        byte_class = b"[" + re.escape(bytes([low_byte])) + b"-" + re.escape(bytes([high_byte])) + b"]"
        return re.escape(prefix) + byte_class + b".{%d}" % rest

    def _candidate_pattern(self, ltid: bytes) -> re.Pattern:
        """Candidate transaction headers: a plausible tid, a length below 2^48, a valid status."""
        return re.compile(b"(?=" + self._tid_regex(ltid) + b"\x00\x00.{6}[ pu])", re.DOTALL)

    def _resync(self, start: int, ltid: bytes) -> int | None:
        """The next position at or after `start` where a transaction whose header and redundant
        length agree begins, or None."""
        pattern = self._candidate_pattern(ltid)
        handle = self.reader.handle
        pos = start
        overlap = TXN_HEADER_LEN
        while pos < self.size:
            handle.seek(pos)
            chunk = handle.read(CHUNK)
            if not chunk:
                return None
            for match in pattern.finditer(chunk):
                candidate = pos + match.start()
                if self._plausible_at(candidate, ltid):
                    return candidate
            if len(chunk) < CHUNK:
                return None
            pos += len(chunk) - overlap
        return None

    def _plausible_at(self, pos: int, ltid: bytes) -> bool:
        header = self.reader.read(pos, TXN_HEADER_LEN)
        if len(header) < TXN_HEADER_LEN:
            return False
        tid, tlen, status, ulen, dlen, elen = TXN_HEADER.unpack(header)
        if not (ltid < tid <= self.max_tid) or status not in STATUSES:
            return False
        if tlen < TXN_HEADER_LEN + ulen + dlen + elen or pos + tlen + 8 > self.size:
            return False
        if self._length_at(pos + tlen) != tlen:
            return False
        data_start = pos + TXN_HEADER_LEN + ulen + dlen + elen
        if data_start == pos + tlen or status == b"u":
            return True
        record = self.reader.read(data_start, RECORD_HEADER_LEN)
        if len(record) < RECORD_HEADER_LEN:
            return False
        _, rtid, _, tloc, _, _ = RECORD_HEADER.unpack(record)
        return rtid == tid and tloc == pos

    # -- pass two ---------------------------------------------------------------------------------

    def iter_records(self, history: bool = False) -> Iterator[RecordItem]:
        """(oid, tid, position, pickle, back, current) of every current record (and with `history`
        every older revision too), in file order. The pickle is None for an undo record: `back` is
        then where its data is (0: the object was deleted)."""
        for index in range(len(self.txn_pos)):
            if self.txn_status[index] != ord("u"):
                yield from self._records_of(index, history)

    def _records_of(self, index: int, history: bool) -> Iterator[RecordItem]:
        """The records of the transaction at `index` that iter_records yields (its hot loop)."""
        span = self.reader.span
        unpack_from = RECORD_HEADER.unpack_from
        dense = self.current.dense
        dense_len = len(dense)
        sparse = self.current.sparse
        pos = self.txn_data[index]
        end = self.txn_end[index]
        buf, base = span(pos, min(end - pos, CHUNK))
        buf_end = base + len(buf)
        while pos < end:
            if pos + RECORD_HEADER_LEN + 8 > buf_end:
                buf, base = span(pos, RECORD_HEADER_LEN + 8)
                buf_end = base + len(buf)
            offset = pos - base
            oid, tid, _, _, _, plen = unpack_from(buf, offset)
            value = dense[oid] if oid < dense_len else sparse.get(oid, 0)
            current = value and (value >> 1) - 1 == pos
            if current and not plen:
                yield oid, tid, pos, None, U64.unpack_from(buf, offset + RECORD_HEADER_LEN)[0], True
            elif plen and (current or history):
                if pos + RECORD_HEADER_LEN + plen > buf_end:
                    data = self.reader.read(pos + RECORD_HEADER_LEN, plen)
                else:
                    data = buf[offset + RECORD_HEADER_LEN : offset + RECORD_HEADER_LEN + plen]
                yield oid, tid, pos, data, pos, bool(current)
            pos += RECORD_HEADER_LEN + (plen or 8)

    def extensions(self) -> Iterator[Tuple[int, bytes, bytes]]:
        """(position, tid, extension bytes) of every transaction that has extension metadata."""
        read = self.reader.read
        for pos in self.txn_pos:
            header = read(pos, TXN_HEADER_LEN)
            tid, _, _, ulen, dlen, elen = TXN_HEADER.unpack(header)
            if elen:
                yield pos, tid, read(pos + TXN_HEADER_LEN + ulen + dlen, elen)

    def load_at(self, oid: int, pos: int) -> Tuple[bytes | None, str | None]:
        """(pickle, None) of the record at `pos`, following back pointers; (None, why) when the
        chain is broken; (None, None) when the object was deleted (its creation undone)."""
        read = self.reader.read
        for _ in range(MAX_BACK_HOPS):
            if pos == 0:
                return None, None
            header = read(pos, RECORD_HEADER_LEN)
            if len(header) < RECORD_HEADER_LEN:
                return None, f"back pointer {pos} is past the end of the file"
            roid, _, _, _, _, plen = RECORD_HEADER.unpack(header)
            if roid != oid:
                return None, f"back pointer {pos} leads to a record of another oid ({hex(roid)})"
            if self._in_unreachable(pos):
                return None, f"back pointer {pos} leads into a damaged part of the file"
            if plen:
                if pos + RECORD_HEADER_LEN + plen > self.size:
                    return None, f"record at {pos} is cut short by the end of the file"
                return read(pos + RECORD_HEADER_LEN, plen), None
            pos = u64(read(pos + RECORD_HEADER_LEN, 8))
        return None, "back pointers form a loop"

    def verify_backs(self) -> Iterator[Problem]:
        """Every undo back pointer leads, through records of the same oid, to a data record."""
        read = self.reader.read
        backs = self.backs
        for index in range(0, len(backs), 2):
            pos, back = backs[index], backs[index + 1]
            oid = u64(read(pos, 8))
            _, why = self.load_at(oid, back)
            if why:
                yield Problem(
                    "backpointer-broken",
                    pos,
                    f"undo record of oid {hex(oid)} at {pos} points to data that is not there: {why}",
                    oid=p64(oid),
                    details={"back": back},
                )
