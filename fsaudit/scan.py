"""Walking a tree at the reading engine's depth, in the order a one-directory-at-a-time walk takes.

A walk that lstat's every entry is bound by the disk on network storage (a millisecond per directory
block and per inode block) and by system calls when cached. Here directories are listed, and their
entries lstat'ed, in the worker processes (`fsaudit.workers`; threads of this process where they
cannot start), up to io depth directories at a time: the directories the walk will reach next are
listed ahead while the caller looks at the current one. The caller still sees one directory after
the other in depth-first order, each one's children in listing order: the same sequence, and so the
same output, as a sequential walk.

Only what a walk for changed entries needs crosses back from a worker: subdirectories, entries whose
mtime or ctime lies in a window, entries that could not be examined, and a count of the rest (or,
for a directory that asks for it, every entry).
"""

from __future__ import annotations

import os
import queue
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple, Union

from fsaudit import reader, workers
from fsaudit.hashing import DEFAULT_IO_DEPTH

# (name, type from the directory or 0, os.stat_result or OSError)
Record = Tuple[bytes, int, Union[os.stat_result, OSError]]


@dataclass
class Listing:
    """One directory as a walk sees it: how many entries it holds, and the records it sent back."""

    entries: int
    records: List[Record]


class _Node:
    __slots__ = ("host", "inner", "depth", "full", "seq")

    def __init__(self, host: bytes, inner: bytes, depth: int, full: bool):
        self.host = host
        self.inner = inner
        self.depth = depth
        self.full = full
        self.seq: Optional[int] = None


def scan_tree(
    host_top: bytes,
    inner_top: bytes,
    start: float,
    end: float,
    settings=1,
    full: Callable[[os.stat_result], bool] = lambda st: False,
    top_full: bool = False,
    descend: Callable[[bytes, bytes, os.stat_result], bool] = lambda inner, host, st: True,
    max_depth: int = 256,
) -> Iterator[Tuple[bytes, bytes, Union[Listing, OSError]]]:
    """(inner path, host path, Listing or the OSError that stopped the listing) for every directory
    below `host_top` (itself included), without following symlinks, depth-first.

    `full(st)` says whether a subdirectory (by its lstat) must send every entry back; `descend(inner,
    host, st)` False keeps the walk out of a subdirectory. Both are called when the walk has just
    yielded the subdirectory's parent and the caller is done with it, in reverse listing order."""
    if isinstance(settings, int):
        jobs, depth = settings, DEFAULT_IO_DEPTH
    else:
        jobs, depth = settings.jobs, getattr(settings, "io_depth", 0) or DEFAULT_IO_DEPTH
    yield from _Scan(max(1, int(jobs)), max(1, int(depth)), start, end).walk(
        _Node(host_top, inner_top, 0, top_full), full, descend, max_depth
    )


# Directories a walk lists on threads of this process before it starts the worker processes.
START_AFTER = 64


class _Scan:
    def __init__(self, jobs: int, depth: int, start: float, end: float):
        self.jobs = jobs
        self.depth = depth
        self.header = (float(start), float(end))
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pool = None
        self.remote = False
        self.epoch = None
        # Worker processes already running are used at once; a small tree does not start them.
        if jobs > 1:
            self._use(workers.running(jobs, depth))
        self.threads = workers.threads(1 if self.remote else depth)
        self.cancelled = False
        self.next_seq = 0
        self.waiting: dict = {}  # seq -> (node, True when a worker process lists it)
        self.replies: dict = {}  # seq -> reply

    def walk(self, top: _Node, full, descend, max_depth: int):
        stack: List[_Node] = [top]
        try:
            while stack:
                node = stack.pop()
                if node.seq is None:
                    self._submit([node])
                listing = self._listing(node)
                yield node.inner, node.host, listing
                if isinstance(listing, OSError) or node.depth >= max_depth:
                    continue
                prefix = b"" if node.inner == b"/" else node.inner
                base = b"" if node.host == b"/" else node.host
                for name, _kind, st in reversed(listing.records):
                    if isinstance(st, OSError) or not stat.S_ISDIR(st.st_mode):
                        continue
                    inner, host = prefix + b"/" + name, base + b"/" + name
                    if descend(inner, host, st):
                        stack.append(_Node(host, inner, node.depth + 1, full(st)))
                self._prefetch(stack)
        finally:
            self.cancelled = True
            if self.epoch is not None:
                self.pool.unregister(self.epoch, cancel=bool(self.waiting))

    def _prefetch(self, stack: List[_Node]) -> None:
        """Ask for the listings of the directories the walk reaches next (the top of the stack)."""
        room = 2 * self.depth - len(self.waiting)
        wanted = []
        for node in reversed(stack):
            if room <= 0:
                break
            if node.seq is None:
                wanted.append(node)
                room -= 1
        if wanted:
            self._submit(wanted)

    def _use(self, pool) -> None:
        if pool is not None:
            self.pool, self.remote = pool, True
            self.epoch = pool.register(self.inbox)

    def _submit(self, nodes: List[_Node]) -> None:
        if self.jobs > 1 and self.pool is None and self.next_seq >= START_AFTER:
            self._use(workers.workers(self.jobs, self.depth))
            self.threads = workers.threads(1 if self.remote else self.depth)
        jobs = []
        for node in nodes:
            node.seq = self.next_seq
            self.next_seq += 1
            jobs.append((node.seq, node.host, node.full))
        if self.remote:
            share = -(-len(jobs) // len(self.pool.processes))
            for start in range(0, len(jobs), share):
                batch = jobs[start : start + share]
                sent = self.remote and self.pool.send("scan", self.epoch, self.header, batch)
                for job, node in zip(batch, nodes[start : start + share]):
                    self.waiting[job[0]] = (node, sent)
                    if not sent:
                        self.threads.put((self._run_here, job))
            return
        for job, node in zip(jobs, nodes):
            self.waiting[job[0]] = (node, False)
            self.threads.put((self._run_here, job))

    def _run_here(self, job: tuple) -> None:
        if self.cancelled:
            return
        self.inbox.put(("done", [reader.Jobs().run("scan", self.header, job, lambda: self.cancelled)]))

    def _rescue(self) -> None:
        """The worker processes are gone: the listings they held, and the rest, are made here."""
        if not self.remote:
            return
        self.remote = False
        self.threads = workers.threads(self.depth)
        for seq, (node, remote) in list(self.waiting.items()):
            if remote and seq not in self.replies:
                self.waiting[seq] = (node, False)
                self.threads.put((self._run_here, (seq, node.host, node.full)))

    def _listing(self, node: _Node) -> Union[Listing, OSError]:
        while node.seq not in self.replies:
            message = workers.get(self.inbox)
            if message[0] == "dead":
                self._rescue()
                continue
            for reply in message[1]:
                if reply[0] in self.waiting:
                    self.replies[reply[0]] = reply
        reply = self.replies.pop(node.seq)
        del self.waiting[node.seq]
        status = reply[1]
        if status == reader.OK:
            return Listing(reply[2], [_record(node.host, record) for record in reply[3]])
        if status == reader.BUG:
            raise RuntimeError(f"listing {os.fsdecode(node.inner)} failed: {reply[2]}")
        return OSError(status, reply[2], node.inner)


def _record(host_dir: bytes, record: tuple) -> Record:
    name, kind, fields = record
    if isinstance(fields, int):
        return name, kind, OSError(fields, os.strerror(fields), host_dir + b"/" + name)
    return name, kind, reader.stat_result(fields)
