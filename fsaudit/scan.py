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

import heapq
import os
import queue
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, List, Tuple, Union

from fsaudit import reader, workers
from fsaudit.hashing import jobs_and_depth

# (name, type from the directory or 0, its lstat (read as an os.stat_result is) or OSError)
Record = Tuple[bytes, int, Union[reader.Stat, OSError]]


@dataclass
class Listing:
    """One directory as a walk sees it: how many entries it holds, and the records it sent back."""

    entries: int
    records: List[Record]


class _Node:
    __slots__ = ("host", "inner", "depth", "full", "key")

    def __init__(self, host: bytes, inner: bytes, depth: int, full: bool, key: tuple = ()):
        self.host = host
        self.inner = inner
        self.depth = depth
        self.full = full
        # The position in depth-first order: the indexes of the subdirectories on the way here.
        # Tuples compare in exactly that order, so the walk's future can be sorted by them.
        self.key = key


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
    may_list: Callable[[bytes, int], bool] = lambda host, depth: True,
) -> Iterator[Tuple[bytes, bytes, Union[Listing, OSError]]]:
    """(inner path, host path, Listing or the OSError that stopped the listing) for every directory
    below `host_top` (itself included), without following symlinks, depth-first.

    `full(st)` says whether a subdirectory (by its lstat) must send every entry back; `descend(inner,
    host, st)` False keeps the walk out of a subdirectory. Both are called when the walk has just
    yielded the subdirectory's parent and the caller is done with it, in reverse listing order.
    Directories are listed ahead of the caller, where `may_list(host, depth)` allows (it must not
    have side effects: a network mount or a pseudo filesystem the walk will not enter is never
    listed ahead)."""
    jobs, depth = jobs_and_depth(settings)
    scan = _Scan(jobs, depth, start, end, full, may_list, max_depth)
    yield from scan.walk(_Node(host_top, inner_top, 0, top_full), descend)


# Directories a walk lists on threads of this process before it starts the worker processes: an
# empty or tiny tree does not start them. Few: the threads of this process list slowly, contending
# with the walk for the interpreter lock (the first 64 directories of the 300,000-entry benchmark
# tree took 0.19 s that way, the next 3,900 in the workers 0.69 s).
START_AFTER = 8


class _Scan:
    """One walk: the caller's depth-first walk, and the listings made ahead of it, in the order the
    walk will need them (the smallest depth-first position first)."""

    def __init__(self, jobs: int, depth: int, start: float, end: float, full, may_list, max_depth: int):
        self.jobs = jobs
        self.depth = depth
        self.header = (float(start), float(end))
        self.full = full
        self.may_list = may_list
        self.max_depth = max_depth
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
        self.listed: dict = {}  # host -> (seq, key, full) of listings asked for, not yet taken
        self.waiting: dict = {}  # seq -> (host, key, depth, full, True when a worker process lists it)
        self.replies: dict = {}  # seq -> reply
        self.ahead: list = []  # heap of (key, host, depth, full): subdirectories seen, not yet asked for
        self.position: tuple = ()

    def walk(self, top: _Node, descend):
        stack: List[_Node] = [top]
        try:
            while stack:
                node = stack.pop()
                self.position = node.key
                listing = self._take(node)
                yield node.inner, node.host, listing
                if not isinstance(listing, OSError) and node.depth < self.max_depth:
                    self._children(node, listing, descend, stack)
                self._ahead()
        finally:
            self.cancelled = True
            if self.epoch is not None:
                self.pool.unregister(self.epoch, cancel=bool(self.waiting))

    def _children(self, node: _Node, listing: Listing, descend, stack: List[_Node]) -> None:
        prefix = b"" if node.inner == b"/" else node.inner
        base = b"" if node.host == b"/" else node.host
        directories = [
            (name, st)
            for name, _, st in listing.records
            if not isinstance(st, OSError) and stat.S_ISDIR(st.st_mode)
        ]
        for index in range(len(directories) - 1, -1, -1):
            name, st = directories[index]
            inner, host = prefix + b"/" + name, base + b"/" + name
            if descend(inner, host, st):
                stack.append(_Node(host, inner, node.depth + 1, self.full(st), node.key + (index,)))
            else:
                self._forget(host)

    # -- listings ahead of the walk ------------------------------------------------------------------

    def _ahead(self) -> None:
        """Ask for the listings the walk will need next, up to 2 x io depth in flight; keep what was
        listed and not yet taken below 16 x io depth."""
        room = 2 * self.depth - (len(self.waiting) - len(self.replies))
        if room < max(1, self.depth // 2):
            return  # ask in batches: one message per worker, not one per directory
        wanted: List[tuple] = []
        chosen: set = set()
        while len(wanted) < room and self.ahead and len(self.replies) + len(wanted) < 16 * self.depth:
            key, host, depth, full = heapq.heappop(self.ahead)
            if key <= self.position or host in self.listed or host in chosen:
                continue  # the walk is past it, or it is asked for already
            chosen.add(host)
            wanted.append((host, key, depth, full))
        if wanted:
            self._submit(wanted)
        if len(self.listed) > 64 * self.depth:
            # Listed ahead and then left out by the walk (a subdirectory it did not enter).
            for host, (_, key, _) in list(self.listed.items()):
                if key < self.position:
                    self._forget(host)

    def _expand(self, host: bytes, key: tuple, depth: int, records: list) -> None:
        """A listing arrived: its subdirectories join the walk's future."""
        if depth >= self.max_depth:
            return
        base = b"" if host == b"/" else host
        index = 0
        for name, _, fields in records:
            if isinstance(fields, int) or not stat.S_ISDIR(fields[0]):
                continue
            child = base + b"/" + name
            if self.may_list(child, depth + 1):
                full = self.full(reader.Stat(fields))
                heapq.heappush(self.ahead, (key + (index,), child, depth + 1, full))
            index += 1

    def _forget(self, host: bytes) -> None:
        entry = self.listed.pop(host, None)
        if entry is not None:
            self.replies.pop(entry[0], None)
            self.waiting.pop(entry[0], None)

    # -- asking for listings and taking them ---------------------------------------------------------

    def _use(self, pool) -> None:
        if pool is not None:
            self.pool, self.remote = pool, True
            self.epoch = pool.register(self.inbox)

    def _submit(self, nodes: List[tuple]) -> List[int]:
        """Ask for the listings of (host, key, depth, full); their sequence numbers."""
        if self.jobs > 1 and self.pool is None and self.next_seq >= START_AFTER:
            self._use(workers.workers(self.jobs, self.depth))
            self.threads = workers.threads(1 if self.remote else self.depth)
        jobs = []
        for host, key, depth, full in nodes:
            seq = self.next_seq
            self.next_seq += 1
            self.listed[host] = (seq, key, full)
            self.waiting[seq] = (host, key, depth, full, False)
            jobs.append((seq, host, full, key))
        share = -(-len(jobs) // len(self.pool.processes)) if self.remote else len(jobs)
        for start in range(0, len(jobs), share):
            batch = jobs[start : start + share]
            if self.remote and self.pool.send("scan", self.epoch, self.header, batch):
                for seq, *_ in batch:
                    self.waiting[seq] = self.waiting[seq][:4] + (True,)
            else:
                for job in batch:
                    self.threads.put((self._run_here, job))
        return [job[0] for job in jobs]

    def _run_here(self, job: tuple) -> None:
        if self.cancelled:
            return
        self.inbox.put(("done", [reader.Jobs().run("scan", self.header, job, lambda: self.cancelled)]))
        workers.wake(self.pool if self.remote else None)

    def _rescue(self) -> None:
        """The worker processes are gone: the listings they held, and the rest, are made here."""
        if not self.remote:
            return
        self.remote = False
        self.threads = workers.threads(self.depth)
        for seq, (host, key, depth, full, remote) in list(self.waiting.items()):
            if remote and seq not in self.replies:
                self.waiting[seq] = (host, key, depth, full, False)
                self.threads.put((self._run_here, (seq, host, full)))

    def _receive(self, block: bool) -> None:
        workers.drain(self.inbox, self.pool if self.remote else None, block, self._listed, self._rescue)

    def _listed(self, replies: list) -> None:
        for reply in replies:
            waiting = self.waiting.get(reply[0])
            if waiting is None or reply[0] in self.replies:
                continue  # forgotten, or a duplicate after a rescue
            self.replies[reply[0]] = reply
            if reply[1] == reader.OK:
                self._expand(waiting[0], waiting[1], waiting[2], reply[3])

    def _take(self, node: _Node) -> Union[Listing, OSError]:
        entry = self.listed.pop(node.host, None)
        if entry is not None and entry[2] != node.full:
            self.replies.pop(entry[0], None)
            self.waiting.pop(entry[0], None)
            entry = None
        seq = (
            entry[0] if entry is not None else self._submit([(node.host, node.key, node.depth, node.full)])[0]
        )
        self.listed.pop(node.host, None)
        self._receive(block=False)
        self._ahead()
        while seq not in self.replies:
            self._receive(block=True)
            self._ahead()
        reply = self.replies.pop(seq)
        del self.waiting[seq]
        status = reply[1]
        if status == reader.OK:
            made = reader.Stat
            return Listing(
                reply[2],
                [
                    (name, kind, made(fields) if type(fields) is tuple else _error(node.host, name, fields))
                    for name, kind, fields in reply[3]
                ],
            )
        if status == reader.BUG:
            raise RuntimeError(f"listing {os.fsdecode(node.inner)} failed: {reply[2]}")
        return OSError(status, reply[2], node.inner)


def _error(host_dir: bytes, name: bytes, number: int) -> OSError:
    """The OSError of an entry the worker could not lstat (it sent the errno)."""
    return OSError(number, os.strerror(number), host_dir + b"/" + name)
