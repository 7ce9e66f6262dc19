"""Auditing one Data.fs: the structural walk, references, blobs, Data.fs.index and the window."""

from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass
from typing import Iterator, List

from fsaudit.model import Severity
from fsaudit.problems import Count, Incomplete, Item
from fsaudit.problems import Problem as Found
from fsaudit.target import NotRegularFile, Target
from fsaudit_checks.zodb.blobs import BlobCheck
from fsaudit_checks.zodb.discovery import Storage
from fsaudit_checks.zodb.format import hex_id, p64, tid_text
from fsaudit_checks.zodb.index import MAX_LISTED, compare_index
from fsaudit_checks.zodb.pickle import (
    IndexUnreadable,
    RecordParser,
    UnreadablePickle,
    check_extension,
    class_name,
    memory_ceiling,
    read_index,
)
from fsaudit_checks.zodb.walk import Problem, Walk

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO
BLOB_CLASSES = {"ZODB.blob.Blob"}
# Records parsed between two hand-overs of findings (see `memory_ceiling`).
BATCH = 4096

SEVERITY = {
    "bad-magic": CRITICAL,
    "truncated-transaction": CRITICAL,
    "transaction-damaged": CRITICAL,
    "record-damaged": CRITICAL,
    "length-mismatch": CRITICAL,
    "unreachable-range": CRITICAL,
    "prev-chain-broken": CRITICAL,
    "backpointer-broken": CRITICAL,
    "unreadable-record": CRITICAL,
    "dangling-reference": CRITICAL,
    "root-missing": CRITICAL,
    "checkpoint-transaction": WARNING,
}

RESTORE = (
    "Restore Data.fs from a backup (repozo) and replay what you can since. Work on a copy: never open "
    "the damaged file read-write (ZODB would cut the damaged tail off into Data.fs.tr0)."
)


def restore_advice(last_good: bytes | None) -> str:
    if not last_good:
        return RESTORE
    when = tid_text(last_good)
    return f"{RESTORE} The last intact transaction before the damage is {hex_id(last_good)} ({when})."


@dataclass
class WindowWrites:
    """The storage's last transaction, for the checker to say whether it was written in the window."""

    subject: str
    path: bytes | None
    last_tid: bytes
    walk: Walk | None


class StorageAudit:
    """Everything checked for one Data.fs; what it finds and counts it yields as plain problems
    (fsaudit.problems), which the checker makes findings and stats."""

    def __init__(self, settings, context, target: Target, storage: Storage):
        self.settings = settings  # the zodb checker's (references, history)
        self.context = context  # the run's: window, progress, verified paths
        self.target = target
        self.storage = storage
        self.path = storage.path
        self.damaged = False
        self.parser = RecordParser()

    def problem(self, code, severity, message, subject=None, details=None, advice="") -> Item:
        if severity == CRITICAL:
            self.damaged = True
        return Found(code, severity, message, subject, self.path, details or {}, advice)

    def run(self) -> Iterator[Item]:
        try:
            handle = self.target.open(self.path)
        except FileNotFoundError:
            yield Found(
                "storage-missing",
                WARNING,
                "the storage file named by " + ", ".join(self.storage.sources) + " does not exist",
                path=self.path,
                advice="If the application still uses this storage, restore Data.fs from a backup; "
                "otherwise remove the stale configuration.",
            )
            return
        except NotRegularFile as error:
            yield Found("unreadable", WARNING, f"{error.kind} where a Data.fs was expected", path=self.path)
            yield Incomplete(f"{self.target.display(self.path)} could not be read")
            return
        except OSError as error:
            yield Found("unreadable", WARNING, f"cannot open: {error.strerror or error}", path=self.path)
            yield Incomplete(f"{self.target.display(self.path)} could not be read")
            return
        yield Count("storages")
        with handle:
            try:
                yield from self._audit(handle)
            except OSError as error:
                yield self.problem(
                    "unreadable",
                    WARNING,
                    f"reading failed: {error.strerror or error}",
                    advice="A read error on Data.fs is damage on the disk: copy what can be read and "
                    "restore from a backup.",
                )
                yield Incomplete(f"{self.target.display(self.path)} could not be read to the end")

    def _audit(self, handle) -> Iterator[Item]:
        size = handle.st.st_size
        yield Count("bytes_read", size)
        walk = Walk(handle, size, window=self.context.window)
        progress = self.context.progress
        progress.start(f"zodb {self.target.display(self.path)}: structure (bytes)", size)
        walked = [0]

        def advance(done: int) -> None:
            progress.advance(done - walked[0])
            walked[0] = done

        walk.on_progress = advance
        for problem in walk.walk():
            yield from self._emit(problem, walk.last_tid)
        progress.stop()
        for problem in walk.verify_backs():
            yield from self._emit(problem, None)
        yield Count("transactions", walk.transactions)
        yield Count("records", walk.records)
        objects = len(walk.current)
        if walk.transactions and (walk.current.get(0) is None or walk.current.get(0)[1]):
            yield from self._emit(
                Problem("root-missing", 4, "the storage has no root object (oid 0x0)"), None
            )
        references = 0
        if self.settings["references"] and walk.magic:
            references = yield from self._references(walk)
        yield from self._index(walk, size)
        if walk.last_tid:
            yield WindowWrites(f"tid {hex_id(walk.last_tid)}", self.path, walk.last_tid, walk)
        details = {
            "size": size,
            "magic": walk.magic.decode("latin-1"),
            "transactions": walk.transactions,
            "records": walk.records,
            "objects": objects,
            "references": references,
            "unreachable_bytes": sum(end - start for start, end in walk.unreachable),
            "blob_dir": os.fsdecode(self.storage.blob_dir) if self.storage.blob_dir else None,
        }
        if walk.last_tid:
            details.update(
                first_tid=hex_id(walk.first_tid),
                first_time=tid_text(walk.first_tid),
                last_tid=hex_id(walk.last_tid),
                last_time=tid_text(walk.last_tid),
            )
        if self.settings["references"]:
            # Every byte of it was read and cross-checked: `window` need not list it as unverified.
            self.context.verified.add(self.target.inner_path(self.target.resolve(self.path)))
        verdict = "damaged" if self.damaged else "intact"
        yield Found(
            "storage-checked",
            INFO,
            f"{verdict}: {walk.transactions} transactions, {objects} objects, last transaction "
            + (tid_text(walk.last_tid) if walk.last_tid else "none"),
            path=self.path,
            details=details,
        )

    # -- structure --------------------------------------------------------------------------------

    def _emit(self, problem: Problem, last_good: bytes | None) -> Iterator[Item]:
        details = {"offset": problem.pos, **problem.details}
        subject_parts = []
        if problem.tid:
            details.update(tid=hex_id(problem.tid), tid_time=tid_text(problem.tid))
            subject_parts.append(f"tid {hex_id(problem.tid)}")
        if problem.oid:
            details["oid"] = hex_id(problem.oid)
            subject_parts.append(f"oid {hex_id(problem.oid)}")
        if last_good:
            details.update(last_good_tid=hex_id(last_good), last_good_time=tid_text(last_good))
        advice = restore_advice(last_good)
        yield self.problem(
            problem.code,
            SEVERITY[problem.code],
            problem.message,
            subject=" ".join(subject_parts) or None,
            details=details,
            advice=advice,
        )

    # -- references and blobs ------------------------------------------------------------------------

    def _references(self, walk: Walk):
        history = self.settings["history"]
        progress = self.context.progress
        total = walk.records if history else walk.current.count
        progress.start(f"zodb {self.target.display(self.path)}: objects", total)
        blobs = BlobCheck(self.target, self.storage.blob_dir, self.problem)
        records = walk.iter_records(history)
        # Generous for any real record, small enough that a pickle announcing absurd sizes fails.
        extra = max(1 << 30, 8 * walk.max_plen)
        done = references = 0
        while True:
            found: List[Item] = []
            with memory_ceiling(extra):
                batch = list(itertools.islice(records, BATCH))
                for item in batch:
                    references += self._check_record(walk, item, found, blobs)
            # Findings leave only outside the ceiling: the rest of fsaudit runs without it.
            yield from found
            done += len(batch)
            progress.advance(len(batch))
            if len(batch) < BATCH:
                break
        progress.stop()
        yield Count("records_parsed", done)
        yield from self._extensions(walk)
        yield Count("references_checked", references)
        if blobs.unverified:
            yield Incomplete(
                f"{blobs.unverified} blob(s) of {self.target.display(self.path)} not verified: "
                "no blob directory known (set zodb.blob_dir)"
            )
        return references

    def _check_record(self, walk: Walk, item, found: List[Item], blobs: BlobCheck) -> int:
        """Parse one record, adding its findings to `found`; the number of references it holds."""
        oid_int, tid, pos, data, back, current = item
        if not current:
            found.extend(self._old_revision(oid_int, tid, pos, data))
            return 0
        if data is None:
            if not back:
                return 0  # deleted: its creation was undone
            data, _why = walk.load_at(oid_int, back)
            if data is None:
                return 0  # broken back pointers are reported by verify_backs
        try:
            meta, refs, _foreign = self.parser.references(data)
        except UnreadablePickle as error:
            problem = Problem(
                "unreadable-record",
                pos,
                f"the current record of oid {hex(oid_int)} cannot be unpickled: {error}",
                tid=tid,
                oid=p64(oid_int),
            )
            found.extend(self._emit(problem, None))
            return 0
        dense, sparse = walk.current.dense, walk.current.sparse
        missing = undone = None
        for ref in refs:
            ref_int = int.from_bytes(ref, "big")
            value = dense[ref_int] if ref_int < len(dense) else sparse.get(ref_int, 0)
            if not value:
                missing = missing or []
                missing.append(hex(ref_int))
            elif value & 1:
                undone = undone or []
                undone.append(hex(ref_int))
        if missing or undone:
            found.extend(self._dangling(p64(oid_int), tid, class_name(meta), missing or [], undone or []))
        # The class name is in the first bytes of the record: look closer only at likely blobs.
        if b"Blob" in data[:64] and class_name(meta) in BLOB_CLASSES:
            found.extend(blobs.check(p64(oid_int), tid))
        return len(refs)

    def _old_revision(self, oid_int: int, tid: bytes, pos: int, data: bytes) -> Iterator[Item]:
        try:
            self.parser.references(data)
        except UnreadablePickle as error:
            yield self.problem(
                "unreadable-revision",
                WARNING,
                f"an older revision of oid {hex(oid_int)} (at offset {pos}) cannot be unpickled: {error}",
                subject=f"tid {hex_id(tid)} oid {hex(oid_int)}",
                details={"offset": pos, "oid": hex(oid_int), "tid": hex_id(tid), "tid_time": tid_text(tid)},
                advice="The current state is intact, but undo and history of this object back to this "
                "revision fail. Restore from a backup if you need them.",
            )

    def _extensions(self, walk: Walk) -> Iterator[Item]:
        damaged = []
        with memory_ceiling(1 << 30):
            for pos, tid, data in walk.extensions():
                try:
                    check_extension(data)
                except UnreadablePickle as error:
                    damaged.append((pos, tid, error))
        for pos, tid, error in damaged:
            yield self.problem(
                "metadata-damaged",
                WARNING,
                f"the extension metadata of the transaction at {pos} cannot be unpickled: {error}",
                subject=f"tid {hex_id(tid)}",
                details={"offset": pos, "tid": hex_id(tid), "tid_time": tid_text(tid)},
                advice="The objects are intact, but undo and history listings fail on this transaction. "
                "Restore from a backup if you need them.",
            )

    def _dangling(self, oid, tid, class_name, missing, undone) -> Iterator[Item]:
        missing = sorted(set(missing), key=lambda text: int(text, 16))
        undone = sorted(set(undone), key=lambda text: int(text, 16))
        names = missing + undone
        message = f"oid {hex_id(oid)} ({class_name}) references " + ", ".join(names[:5])
        message += " and more" if len(names) > 5 else ""
        message += ", which " + ("does not exist" if len(names) == 1 else "do not exist")
        if undone and not missing:
            message += " (their creation was undone)"
        yield self.problem(
            "dangling-reference",
            CRITICAL,
            message,
            subject=f"oid {hex_id(oid)}",
            details={
                "oid": hex_id(oid),
                "class": class_name,
                "tid": hex_id(tid),
                "tid_time": tid_text(tid),
                "missing": missing[:MAX_LISTED],
                "undone": undone[:MAX_LISTED],
            },
            advice="Loading these objects (or walking into them) raises POSKeyError. Restore from a backup "
            "taken before the damage; if Data.fs is otherwise intact, the application must repair the "
            "referencing objects (replace or remove the references).",
        )

    # -- Data.fs.index ---------------------------------------------------------------------------

    def _index(self, walk: Walk, size: int) -> Iterator[Item]:
        index_path = self.path + b".index"
        rebuild = (
            "Data.fs.index is only a cache: stop the application or ZEO server, move Data.fs.index aside "
            "and start again; FileStorage rebuilds it from Data.fs."
        )
        try:
            handle = self.target.open(index_path)
        except FileNotFoundError:
            return
        except OSError as error:
            yield self.problem("index-unreadable", WARNING, f"cannot open {os.fsdecode(index_path)}: {error}")
            return
        yield Count("indexes")
        with handle, io.BufferedReader(handle, 1 << 20) as buffered:
            try:
                with memory_ceiling(1 << 30):
                    covered, buckets = read_index(buffered)
                    summary = compare_index(walk, size, covered, buckets)
            except IndexUnreadable as error:
                yield self.problem(
                    "index-unreadable",
                    WARNING,
                    f"{os.fsdecode(index_path)} cannot be read: {error}",
                    advice=rebuild,
                )
                return
        if covered > size:
            yield self.problem(
                "index-beyond-end",
                CRITICAL,
                f"Data.fs.index was written when Data.fs was {covered} bytes long; it now has {size}: "
                f"the last {covered - size} bytes of transactions were lost",
                subject=f"tid {hex_id(walk.last_tid)}" if walk.last_tid else None,
                details={
                    "index_position": covered,
                    "size": size,
                    "lost_bytes": covered - size,
                    "objects_lost_revisions": summary["beyond"],
                    "affected_oids": summary["beyond_oids"],
                    **self._last_good(walk),
                },
                advice=restore_advice(walk.last_tid)
                + " Everything committed after it is gone from this file; keep Data.fs.index as evidence "
                "of how much was lost.",
            )
            return
        problems = summary["wrong"] + summary["unindexed"] + summary["beyond"]
        if covered not in (4, walk.end_pos) and not walk.is_boundary(covered):
            problems += 1
            summary["position_not_a_transaction"] = covered
        if problems:
            yield self.problem(
                "index-mismatch",
                WARNING if not self.damaged else CRITICAL,
                f"Data.fs.index disagrees with Data.fs for {problems} object(s)",
                details={"index_position": covered, **summary},
                advice=(RESTORE + " " if self.damaged else "") + rebuild,
            )

    @staticmethod
    def _last_good(walk: Walk) -> dict:
        if not walk.last_tid:
            return {}
        return {"last_good_tid": hex_id(walk.last_tid), "last_good_time": tid_text(walk.last_tid)}
