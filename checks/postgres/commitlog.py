"""The commit log of a cluster (`pg_xact`): which file a server error names, whether a transaction id
is one the cluster knows, commit-log pages that lost their content, and the rows they hide.

A transaction's outcome is two bits in `pg_xact` (00 in progress, 01 committed, 10 aborted). When a
page of it reads all zero although every transaction it covers is older than every running one, the
page lost its content: the rows those transactions wrote are invisible (and rows they deleted are
back), without any error. The evidence is read through the server (`pg_read_binary_file`), so it
works for a remote cluster too, and each page is confirmed with `pg_xact_status`, which reads the
server's own buffers (a page the server holds newer than the disk is not damage). The rows a damaged
page hides are found in the tables' own pages: tuples whose inserting transaction is on it and that
were never seen committed (no HEAP_XMIN_COMMITTED hint).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

PAGE_BYTES = 8192
PAGE_XIDS = PAGE_BYTES * 4  # two bits per transaction
SEGMENT_PAGES = 32
SEGMENT_BYTES = PAGE_BYTES * SEGMENT_PAGES
SEGMENT_XIDS = PAGE_XIDS * SEGMENT_PAGES
XID_SPACE = 1 << 32
FIRST_NORMAL_XID = 3
# A page is evidence only when it covers at least this many transactions that certainly ended.
MIN_PAGE_XIDS = 64
# Transactions per damaged page whose status is asked of the server.
CONFIRM_SAMPLES = 8
ZERO_PAGE = bytes(PAGE_BYTES)

HEAP_XMIN_COMMITTED = 0x0100
LP_NORMAL = 1
_LINE_POINTER = struct.Struct("<I")
_PAGE_BOUNDS = struct.Struct("<HH")  # pd_lower, pd_upper at offset 12
_XMIN = struct.Struct("<I")
_INFOMASK = struct.Struct("<H")

# The server quotes a file's path after the word "file" ('could not open file "base/5/16404"');
# names of relations are quoted too ('index "x"'), and a tenant may name an index "pg_xact/0EFF".
_QUOTED_PATH = re.compile(r'\bfile "((?:[^"/]+/)+[^"]+)"', re.IGNORECASE)
_RELATION_PATH = re.compile(
    r"^((?:base/\d+|global|pg_tblspc/\d+/[^/]+/\d+)/\d+)(?:_(fsm|vm|init))?(?:\.\d+)?$"
)
_COMMIT_LOG_PATH = re.compile(
    r"^(pg_xact|pg_clog|pg_subtrans|pg_multixact/(?:offsets|members))/([0-9A-Fa-f]+)$"
)
_XID_IN_MESSAGE = re.compile(r"(?:status of|access) (?:transaction|multixact) (\d+)")


@dataclass(frozen=True)
class NamedFile:
    """A file a server error names: a relation's (`relation` is its main fork's path, `fork` the
    fork's name or ""), a commit-log segment's (`area` pg_xact, pg_multixact/offsets...), or another."""

    path: str
    kind: str  # "relation", "commit-log", "other"
    relation: str = ""
    fork: str = ""
    area: str = ""

    @property
    def multixact(self) -> bool:
        return self.area.startswith("pg_multixact")


def named_file(*texts: str) -> Optional[NamedFile]:
    """The first file named in quotes in the server's message or detail, classified."""
    for text in texts:
        for match in _QUOTED_PATH.finditer(text or ""):
            path = match.group(1)
            relation = _RELATION_PATH.match(path)
            if relation:
                return NamedFile(path, "relation", relation=relation.group(1), fork=relation.group(2) or "")
            commit_log = _COMMIT_LOG_PATH.match(path)
            if commit_log:
                return NamedFile(path, "commit-log", area=commit_log.group(1))
            return NamedFile(path, "other")
    return None


def refused_for_damage(text: str) -> Optional[NamedFile]:
    """The file whose damage made the server refuse a session ("FATAL: could not access status of
    transaction ... Could not open file "pg_xact/0000""), or None when it refused for another reason."""
    lowered = (text or "").lower()
    if "could not access status" not in lowered and "could not open file" not in lowered:
        return None
    return named_file(text)


def xid_in_message(text: str) -> Optional[int]:
    """The transaction (or multixact) id of "could not access status of transaction N"."""
    match = _XID_IN_MESSAGE.search(text or "")
    return int(match.group(1)) if match else None


def segment_of(xid: int) -> str:
    """The pg_xact segment file holding the status of 32-bit transaction id `xid`."""
    return f"{(xid % XID_SPACE) // SEGMENT_XIDS:04X}"


def precedes(first: int, second: int) -> bool:
    """Whether 32-bit transaction id `first` comes before `second` (ids wrap around at 2^32)."""
    return ((first - second) % XID_SPACE) >= XID_SPACE // 2


def full_xid(xid: int, reference: int) -> int:
    """The 64-bit id of 32-bit `xid`, the one nearest at or before the 64-bit `reference`."""
    candidate = (reference & ~(XID_SPACE - 1)) | (xid % XID_SPACE)
    if candidate > reference:
        candidate -= XID_SPACE
    return candidate


@dataclass
class DamagedPage:
    """A commit-log page that reads all zero although the transactions it covers all ended
    (64-bit ids `first`..`last`), confirmed by the server."""

    segment: str
    page: int
    first: int
    last: int
    # The page is not on disk at all (its segment file is gone or short), rather than zeroed.
    gone: bool = False
    area: str = "pg_xact"

    @property
    def path(self) -> str:
        return f"{self.area}/{self.segment}"

    def covers(self, xid: int) -> bool:
        return (self.first % XID_SPACE) <= xid <= (self.last % XID_SPACE)


@dataclass
class Horizon:
    """What bounds the transactions whose outcome must be on disk: the oldest one the cluster keeps
    (`oldest`, the oldest datfrozenxid), the oldest still running (`running`) and the next one as of
    the last checkpoint (`checkpoint`), each a 64-bit id."""

    oldest: int
    running: int
    checkpoint: int
    notes: List[str] = field(default_factory=list)

    @property
    def end(self) -> int:
        """Every transaction before this one ended and its outcome was written at a checkpoint."""
        return min(self.running, self.checkpoint)


def parse_checkpoint_xid(text: str) -> Optional[int]:
    """`pg_control_checkpoint().next_xid` ("epoch:xid") as a 64-bit id."""
    epoch, _, xid = (text or "").partition(":")
    try:
        return (int(epoch) << 32) | int(xid) if xid else int(epoch)
    except ValueError:
        return None


def page_spans(horizon: Horizon) -> Iterator[Tuple[int, int, int]]:
    """(page number in the whole 64-bit space, first, last transaction that must have an outcome)
    for each commit-log page that covers transactions between the oldest kept and `horizon.end`."""
    start = max(horizon.oldest, FIRST_NORMAL_XID)
    end = horizon.end
    page = start // PAGE_XIDS
    while page * PAGE_XIDS < end:
        first = max(page * PAGE_XIDS, FIRST_NORMAL_XID)
        last = min((page + 1) * PAGE_XIDS, end) - 1
        yield page, first, last
        page += 1


def zero_pages(
    horizon: Horizon,
    read_segment: Callable[[str], Optional[bytes]],
    status: Callable[[List[int]], Sequence[Optional[str]]],
) -> Tuple[List[DamagedPage], int]:
    """The damaged pages of `pg_xact` between the horizon's bounds, and how many pages were read.

    `read_segment(name)` returns a segment file's bytes (None when it is gone); `status(xids)` the
    server's answer for 64-bit ids ("committed", "aborted", "in progress"). A page counts when it
    is all zero, covers at least MIN_PAGE_XIDS ended transactions, and none of a sample of them is
    committed in the server's eyes (else the disk is only behind the server's buffers)."""
    damaged: List[DamagedPage] = []
    segments: Dict[str, Optional[bytes]] = {}
    # A segment that is gone is confirmed once, not page by page (after pg_resetwal -x, thousands of
    # segments between the old and the new transactions never existed).
    gone_confirmed: Dict[str, bool] = {}
    pages = 0
    for page, first, last in page_spans(horizon):
        if last - first + 1 < MIN_PAGE_XIDS:
            continue
        segment = segment_of(first)
        if segment not in segments:
            segments.clear()  # pages come in order: one segment in memory at a time
            segments[segment] = read_segment(segment)
        data = segments[segment]
        offset = (page % SEGMENT_PAGES) * PAGE_BYTES
        content = data[offset : offset + PAGE_BYTES] if data is not None else b""
        pages += 1
        if len(content) == PAGE_BYTES and content != ZERO_PAGE:
            continue
        if data is None:
            if segment not in gone_confirmed:
                end = min(first - first % SEGMENT_XIDS + SEGMENT_XIDS, horizon.end) - 1
                gone_confirmed[segment] = not _committed(status, first, end)
            if not gone_confirmed[segment]:
                continue
        elif _committed(status, first, last):
            continue
        page_number = page % (XID_SPACE // PAGE_XIDS)
        damaged.append(DamagedPage(segment, page_number, first, last, gone=len(content) < PAGE_BYTES))
    return damaged, pages


def _committed(status: Callable[[List[int]], Sequence[Optional[str]]], first: int, last: int) -> bool:
    """Whether the server sees any of a sample of the transactions first..last as committed."""
    step = max(1, (last - first) // CONFIRM_SAMPLES)
    sample = list(range(first, last + 1, step))[:CONFIRM_SAMPLES] + [last]
    return any(answer == "committed" for answer in status(sample))


def spans(pages: Sequence[DamagedPage]) -> List[Tuple[int, int]]:
    """The 32-bit transaction ids the pages cover, adjacent pages merged: [(first, last)]."""
    merged: List[List[int]] = []
    for page in sorted(pages, key=lambda page: page.first):
        if merged and page.first == merged[-1][1] + 1:
            merged[-1][1] = page.last
        else:
            merged.append([page.first, page.last])
    return [(first % XID_SPACE, last % XID_SPACE) for first, last in merged]


def hidden_in_page(page: bytes, damaged: Sequence[DamagedPage]) -> Dict[str, int]:
    """How many tuples of one heap page were inserted by a transaction on a damaged commit-log page
    and never seen committed (the rows the damage hides), by commit-log file. The page is hostile
    bytes: every offset is checked before it is read."""
    hidden: Dict[str, int] = {}
    if len(page) < PAGE_BYTES:
        return hidden
    lower, upper = _PAGE_BOUNDS.unpack_from(page, 12)
    if upper == 0 or lower < 24 or lower > PAGE_BYTES:
        return hidden
    for position in range(24, lower - 3, 4):
        (raw,) = _LINE_POINTER.unpack_from(page, position)
        offset, flags = raw & 0x7FFF, (raw >> 15) & 0x3
        if flags != LP_NORMAL or offset < 24 or offset + 24 > PAGE_BYTES:
            continue
        (infomask,) = _INFOMASK.unpack_from(page, offset + 20)
        if infomask & HEAP_XMIN_COMMITTED:
            continue
        (xmin,) = _XMIN.unpack_from(page, offset)
        for damage in damaged:
            if damage.covers(xmin):
                hidden[damage.path] = hidden.get(damage.path, 0) + 1
                break
    return hidden


HORIZON_QUERY = """
SELECT {snapshot_xmin}::text::bigint,
       (SELECT datfrozenxid::text::bigint FROM pg_database ORDER BY age(datfrozenxid) DESC LIMIT 1),
       (pg_control_checkpoint()).next_xid
"""


def read_horizon(conn, version: int) -> Horizon:
    """The horizon of the cluster `conn` reaches (PostgreSQL 13+ names its snapshot functions
    pg_*, older ones txid_*)."""
    snapshot = (
        "pg_snapshot_xmin(pg_current_snapshot())"
        if version >= 130000
        else "txid_snapshot_xmin(txid_current_snapshot())"
    )
    running, oldest, checkpoint = conn.execute(HORIZON_QUERY.format(snapshot_xmin=snapshot)).fetchone()
    running = int(running)
    checkpoint_xid = parse_checkpoint_xid(checkpoint)
    return Horizon(
        oldest=full_xid(int(oldest), running),
        running=running,
        checkpoint=running if checkpoint_xid is None else checkpoint_xid,
    )


def find_damaged_pages(conn, version: int) -> Tuple[List[DamagedPage], int]:
    """The damaged pages of the commit log of the cluster `conn` reaches, and how many were read.
    Raises psycopg.Error when the role may not read server files."""
    import psycopg

    horizon = read_horizon(conn, version)
    status_function = "pg_xact_status(%s::text::xid8)" if version >= 130000 else "txid_status(%s::bigint)"

    def read_segment(name: str) -> Optional[bytes]:
        row = conn.execute(
            "SELECT pg_read_binary_file(%s, 0, %s, true)", (f"pg_xact/{name}", SEGMENT_BYTES)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def status(xids: List[int]) -> List[Optional[str]]:
        answers: List[Optional[str]] = []
        for xid in xids:
            try:
                answers.append(conn.execute(f"SELECT {status_function}", (str(xid),)).fetchone()[0])
            except psycopg.Error:
                # The server cannot read it either (its segment is gone): no answer.
                if conn.broken or conn.closed:
                    raise
                answers.append(None)
        return answers

    return zero_pages(horizon, read_segment, status)
