"""The reading engine every file-verifying checker shares: as fast as the disk, as fast as the cores.

On the network storage the audits are made for, a read costs about a millisecond and many can be in
flight, so the number of reads in flight is set by the disk (`--io-depth`, default 32), not by the
core count. Hashing runs in worker processes, one per job (`--jobs`, default: the cores), so the
cores are not shared through the GIL; each worker reads with its own threads (io depth / jobs of
them). `fsaudit.workers` runs them; where they cannot start, the same reads run on threads of this
process and the check's stats say so (`reading`).

Requests are read in order of their path within a window (the files of a directory together),
results come back in request order, and only a bounded number are in flight: memory stays flat
however many files there are, and callers may feed requests from a generator. A file is read no
further than its size when it was opened, a file whose size already differs from the expected one
is not read at all, and holes and absurd sizes are reported (`HashResult.holes`, `.anomaly`).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

from fsaudit import reader, workers
from fsaudit.reader import ABSURD_SIZE, SPARSE, NotRegularFile
from fsaudit.target import Target
from fsaudit.workers import shutdown

LOG = logging.getLogger(__name__)

DEFAULT_IO_DEPTH = 32
BLOCK_SIZE = reader.BLOCK_SIZE
# Requests sorted by path and handed out together (one message per worker).
_WINDOW = 64
# Files a call reads on threads of this process before it starts the worker processes (a window
# that would read more than these starts them).
START_AFTER = 2 * _WINDOW
# Requests not yet yielded (in flight, or done and waiting for an earlier one): results come back in
# request order, so one large file holds back every result after it. With room for only a few
# windows the workers then ran dry while it was read, and waited again for the caller after each
# window (the debian audit of a cached 1 GB tree took 1.3 times as long as with this room). A
# result is a few hundred bytes: memory stays flat.
_CAPACITY = 128 * _WINDOW
__all__ = [
    "ABSURD_SIZE",
    "SPARSE",
    "BatchResult",
    "DigestBatch",
    "HashRequest",
    "HashResult",
    "hash_files",
    "hash_one",
    "start_workers",
    "read_files",
    "shutdown",
]


@dataclass
class HashRequest:
    """A file to hash: its path inside the target, the algorithm, and what the caller needs back."""

    path: bytes
    algorithm: str = "md5"
    expected_size: int | None = None
    key: Any = None
    follow: bool = True
    # Bytes hashed before the content: bytes in which `%d` stands for the file's size (git hashes
    # b"blob %d\0" first), or a callable given the size (hashed on a thread of this process).
    prefix: Optional[Union[bytes, Callable[[int], bytes]]] = None
    # The host path when the caller already resolved it (Target.resolve with the same `follow`).
    host: Optional[bytes] = None


@dataclass
class HashResult:
    """The outcome for one request: a hex digest, or why there is none.

    `digest` is None when the file could not be read (`error` says why: FileNotFoundError,
    NotRegularFile, EIO, ...), when its size differs from `expected_size` (no need to read it), or
    when it is an anomaly of its own (`anomaly`): `SPARSE`, more than 64 MiB of holes where no size
    was expected (zeros nobody wrote), or `ABSURD_SIZE`, larger than its whole filesystem. `holes`
    counts the bytes in holes of any file (0 for a file written the ordinary way).
    """

    request: HashRequest
    digest: str | None = None
    size: int | None = None
    mtime: float | None = None
    error: OSError | None = None
    # The file's lstat as the reader sent it (reader.stat_fields), read through `st`.
    stat_fields: tuple | None = field(default=None, repr=False)
    holes: int = 0
    anomaly: str | None = None

    @property
    def st(self) -> reader.Stat | None:
        """The lstat, read as an os.stat_result is (`st_*` attributes)."""
        return None if self.stat_fields is None else reader.Stat(self.stat_fields)

    @property
    def size_differs(self) -> bool:
        expected = self.request.expected_size
        return self.error is None and expected is not None and self.size != expected


@dataclass
class DigestBatch:
    """Files expected to have known digests, hashed as one request (`hash_files` yields a
    BatchResult for it): a worker reads them in turn and sends back only a size and an mtime for
    each file that matches. For the many files of a package database that are as packaged, the audit
    process then does nothing per file (the debian audit of 25,000 files spent 20 µs per file
    there, beside the workers hashing).

    `paths` are the files' paths inside the target (for the results of those that do not match),
    `hosts` their host paths (Target.resolve, last component not followed), `digests` the expected
    digests (lowercase hex), all in the same order."""

    paths: List[bytes]
    hosts: List[bytes]
    digests: List[str]
    algorithm: str = "md5"
    key: Any = None
    prefix = None  # a batch hashes content only

    @property
    def host(self) -> bytes:
        """Where the batch is read first (windows are read in this order)."""
        return self.hosts[0] if self.hosts else b""

    def request(self, index: int) -> HashRequest:
        """The request of one of its files, as its own result carries it."""
        return HashRequest(self.paths[index], self.algorithm, follow=False, host=self.hosts[index])


@dataclass
class BatchResult:
    """The outcome of a DigestBatch: for each file its size and mtime (-1 and 0.0 for a file that
    did not match), and a full HashResult for each file that did not match, by its index."""

    request: DigestBatch
    sizes: List[int]
    mtimes: List[float]
    others: Dict[int, HashResult]

    @property
    def matched_bytes(self) -> int:
        """The bytes of the files that matched (the others' sizes are -1 each)."""
        return sum(self.sizes) + len(self.others)


def hash_one(target: Target, request: HashRequest) -> HashResult:
    """Hash one file of the target in this thread; never raises for problems of the file itself."""
    return _result(target, request, _run_here(target, request, lambda: False))


def hash_files(
    target: Target,
    requests: Iterable[HashRequest],
    settings: Union[int, Any] = 1,
    stats: Dict[str, Any] | None = None,
) -> Iterator[HashResult]:
    """Hash files, yielding one HashResult per request (a BatchResult per DigestBatch), in request
    order.

    `settings` is the checkers' Context (its `jobs`, `io_depth` and `progress`), or a number of jobs.
    `stats`, when given, gets a `reading` entry saying how the files were read (worker processes,
    or threads and why).
    """
    jobs, depth = jobs_and_depth(settings)
    progress = None if isinstance(settings, int) else getattr(settings, "progress", None)
    yield from _Call(target, jobs, depth, progress, stats).run(iter(requests))


def start_workers(settings: Union[int, Any] = 1) -> None:
    """Start the worker processes now, ahead of the first request. A checker that will hash many
    files (every file of a package database) calls it as it begins: the workers then start while it
    reads its database, instead of after its first requests were read on threads of this process
    (the rpm audit of 600 MB from the page cache: 0.57 -> 0.51 s). Where they cannot start, the
    requests are read on threads as before; with one job, nothing starts."""
    jobs, depth = jobs_and_depth(settings)
    if jobs > 1 and not workers.Workers.failure:
        workers.workers(jobs, depth)


def jobs_and_depth(settings: Union[int, Any]) -> tuple:
    """(jobs, io depth), each at least 1, from the checkers' Context (`jobs`, `io_depth`) or from a
    number of jobs (with the default depth): the shape of the engine's worker processes."""
    if isinstance(settings, int):
        return max(1, settings), DEFAULT_IO_DEPTH
    return max(1, int(settings.jobs)), max(1, int(getattr(settings, "io_depth", None) or DEFAULT_IO_DEPTH))


def read_files(
    items: Iterable[Any], read: Callable[[Any], Any], settings: Union[int, Any] = 1
) -> Iterator[Any]:
    """`read(item)` for every item on `io depth` threads of this process, results in item order.

    For checkers whose reading is their own Python code (a format validator): the reads overlap
    like the engine's. `read` must not raise for problems of the file (return them); an exception
    it raises anyway is raised here. Ctrl-C stops the wait at once; items not started yet are not
    read, the threads finish the ones they hold in the background.
    """
    _, depth = jobs_and_depth(settings)
    pool = workers.threads(depth)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    pending: Dict[int, Any] = {}
    submitted = taken = 0
    iterator = iter(items)
    exhausted = False
    stopped = []

    def call(seq: int, item: Any) -> None:
        if stopped:
            return
        try:
            inbox.put((seq, True, read(item)))
        except BaseException as error:  # raised in the caller's thread
            inbox.put((seq, False, error))

    try:
        while True:
            while not exhausted and submitted - taken < 2 * depth:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pool.put((call, submitted, item))
                submitted += 1
            if exhausted and taken == submitted:
                return
            while taken not in pending:
                seq, ok, value = workers.wait(inbox)
                pending[seq] = (ok, value)
            ok, value = pending.pop(taken)
            taken += 1
            if not ok:
                raise value
            yield value
    finally:
        stopped.append(True)


# -- one call of hash_files ---------------------------------------------------------------------------


class _Call:
    """The requests of one `hash_files` call on their way through the workers and back in order."""

    def __init__(self, target: Target, jobs: int, depth: int, progress, stats):
        self.target = target
        # What every message to a worker says of the target.
        self.header = (target.root, bool(target.drop_cache))
        self.jobs = jobs
        self.depth = depth
        self.progress = progress
        self.stats = stats
        self.capacity = max(4 * depth, _CAPACITY)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.pool = None
        self.remote = False
        self.epoch = None
        self.dispatched = 0
        # Requests of this call each worker process holds, and the seqs a second one was given.
        self.load: List[int] = []
        self.copied: set = set()
        # Worker processes already running are used at once; a call that has only a few files to
        # read does not start them (starting costs more than reading a few files here).
        if jobs > 1:
            self._use(workers.running(jobs, depth))
        self.threads = workers.threads(1 if self.remote else depth)
        # seq -> (request, the index of the worker process that holds it, None on a thread here)
        self.in_flight: Dict[int, tuple] = {}
        self.done: Dict[int, HashResult] = {}
        # Files of the requests not yet yielded (a batch counts each of its files): what `capacity`
        # bounds.
        self.held = 0

    def _use(self, pool) -> None:
        if pool is not None:
            self.pool, self.remote = pool, True
            self.epoch = pool.register(self.inbox)
            self.load = [0] * len(pool.processes)

    def _say_how(self) -> None:
        if self.stats is None:
            return
        reads = f"up to {self.depth} reads in flight"
        if self.remote:
            how = f"{len(self.pool.processes)} worker processes, {reads}"
        elif self.jobs == 1:
            how = f"threads of one process (--jobs 1), {reads}"
        elif workers.Workers.failure:
            how = f"threads of one process ({workers.Workers.failure}), {reads}"
        elif "reading" in self.stats:
            return  # a few files read here: the earlier calls said how the rest was read
        else:
            how = f"threads of one process (only {self.dispatched} files), {reads}"
        self.stats["reading"] = how

    def run(self, requests: Iterator[HashRequest]) -> Iterator[HashResult]:
        window: List[tuple] = []
        next_seq = next_out = 0
        exhausted = False
        try:
            while True:
                # A whole window at a time, when there is room for one (one message per worker, and
                # files sorted together): everything not yet yielded counts, also the results that
                # wait for the one before them.
                while not exhausted and self.held + _WINDOW <= self.capacity:
                    # The first windows are small (2, 2, 4, 8, ... requests): the workers start on the
                    # first of them while the caller prepares the rest (the debian checker plans
                    # 2,048 files for a window of its batches).
                    while len(window) < min(_WINDOW, max(2, next_seq)):
                        try:
                            request = next(requests)
                        except StopIteration:
                            exhausted = True
                            break
                        window.append((next_seq, request))
                        next_seq += 1
                    if window:
                        files = sum(_weight(request) for _, request in window)
                        self.held += files
                        self._dispatch(window, files)
                        window = []
                if next_out not in self.done:
                    self._receive(block=False)
                if next_out in self.done:
                    result = self.done.pop(next_out)
                    self.held -= _weight(result.request)
                    next_out += 1
                    yield result
                    continue
                if exhausted and next_out == next_seq:
                    return
                if exhausted and self.remote:
                    self._rebalance()
                self._receive(block=True)
        finally:
            self.cancelled = True
            if self.epoch is not None:
                self.pool.unregister(self.epoch, cancel=bool(self.in_flight or self.copied))
            self._say_how()

    def _dispatch(self, window: List[tuple], files: int) -> None:
        """Hand a window of requests (of `files` files) out, in path order (the files of a directory
        together)."""
        if self.jobs > 1 and self.pool is None and self.dispatched + files > START_AFTER:
            self._use(workers.workers(self.jobs, self.depth))
            self.threads = workers.threads(1 if self.remote else self.depth)
        self.dispatched += files
        window.sort(key=lambda item: item[1].host or item[1].path)
        remote: List[tuple] = []
        for seq, request in window:
            if self.remote and not callable(request.prefix):
                remote.append((seq, request))
            else:
                self._on_thread(seq, request)
        # One message per worker, the window dealt out in turn: each worker still reads in path
        # order, and a directory's few large files (a package's 4 MB files before its small ones)
        # do not all go to one worker while the others wait.
        count = len(self.pool.processes) if remote else 0
        for first in range(count):
            batch = remote[first::count]
            if not batch:
                continue
            index = min(range(count), key=self.load.__getitem__)
            if self.remote and self.pool.send_to(
                index, "hash", self.epoch, self.header, [_job(s, r) for s, r in batch]
            ):
                self.load[index] += len(batch)
                for seq, request in batch:
                    self.in_flight[seq] = (request, index)
            else:
                for seq, request in batch:
                    self._on_thread(seq, request)

    def _rebalance(self) -> None:
        """Once every request is handed out, a worker process that has none of this call's left
        takes over the last half of those another one holds, to be read by whichever gets to them
        first (the other reply is dropped, and the copies left unread are cancelled as the call
        ends). Without it, the debian audit of a cached 1 GB tree ended with one worker reading its
        last 60 to 170 ms of batches while the other waited."""
        if 0 not in self.load:
            return
        idle = self.load.index(0)
        busiest = max(range(len(self.load)), key=self.load.__getitem__)
        held = sorted(
            seq for seq, entry in self.in_flight.items() if entry[1] == busiest and seq not in self.copied
        )
        moved = held[len(held) // 2 :] if len(held) > 1 else []
        if not moved:
            return
        jobs = [_job(seq, self.in_flight[seq][0]) for seq in moved]
        if self.pool.send_to(idle, "hash", self.epoch, self.header, jobs):
            for seq in moved:
                self.in_flight[seq] = (self.in_flight[seq][0], idle)
            self.copied.update(moved)
            self.load[idle] += len(moved)
            self.load[busiest] -= len(moved)

    def _on_thread(self, seq: int, request: HashRequest) -> None:
        self.in_flight[seq] = (request, None)
        self.threads.put((self._run_on_thread, seq, request))

    def _run_on_thread(self, seq: int, request: HashRequest) -> None:
        if self.cancelled:
            return
        try:
            reply = _run_here(self.target, request, lambda: self.cancelled)
        except BaseException as error:  # a bug: raised in the caller's thread
            reply = (0, reader.BUG, f"{type(error).__name__}: {error}")
        self.inbox.put(("done", [(seq,) + reply[1:]]))
        workers.wake(self.pool if self.remote else None)

    def _receive(self, block: bool) -> None:
        workers.drain(self.inbox, self.pool if self.remote else None, block, self._completed, self._rescue)

    def _completed(self, replies: list) -> None:
        for reply in replies:
            self._complete(reply)

    def _complete(self, reply: tuple) -> None:
        entry = self.in_flight.pop(reply[0], None)
        if entry is None:
            return  # read twice (see _rebalance): the first reply counted
        if entry[1] is not None:
            self.load[entry[1]] -= 1
        result = _result(self.target, entry[0], reply)
        self.done[reply[0]] = result
        if self.progress is not None:
            self.progress.add_bytes(_bytes_read(result))

    def _rescue(self) -> None:
        """The worker processes are gone: what they held, and the rest of the call, runs on threads."""
        if not self.remote:
            return
        self.remote = False
        self.threads = workers.threads(self.depth)
        lost = [(seq, entry[0]) for seq, entry in self.in_flight.items() if entry[1] is not None]
        LOG.debug("the reading workers ended; %d files are read on threads instead", len(lost))
        for seq, request in lost:
            self._on_thread(seq, request)


def _weight(request) -> int:
    """Files a request stands for (a batch, each of its files)."""
    return len(request.hosts) if isinstance(request, DigestBatch) else 1


def _bytes_read(result) -> int:
    if isinstance(result, BatchResult):
        return result.matched_bytes + sum(_bytes_read(other) for other in result.others.values())
    return result.size or 0 if result.digest is not None else 0


def _run_here(target: Target, request: HashRequest, stopped) -> tuple:
    """A reply tuple (as a worker sends it) for one request read in this process."""
    try:
        host = request.host if request.host is not None else target.resolve(request.path, request.follow)
    except OSError as error:
        return (0, error.errno or errno.EIO, error.strerror or str(error))
    return _local_jobs().run("hash", (target.root, target.drop_cache), _job(0, request, host), stopped)


def _job(seq: int, request: HashRequest, host: Optional[bytes] = None) -> tuple:
    """The tuple a worker process gets for a request (`host`: its path here, resolved already)."""
    if isinstance(request, DigestBatch):
        return (seq, request.hosts, reader.HOSTS, request.algorithm, -1, None, request.digests)
    host = request.host if host is None else host
    if host is not None:
        path, how = host, reader.HOST
    else:
        path = request.path if isinstance(request.path, bytes) else os.fsencode(request.path)
        how = reader.FOLLOW if request.follow else reader.RESOLVE
    return (seq, path, how, request.algorithm, _expected(request), request.prefix, None)


def _expected(request: HashRequest) -> int:
    return -1 if request.expected_size is None else request.expected_size


def _result(target: Target, request: HashRequest, reply: tuple) -> HashResult:
    status = reply[1]
    if status == reader.BATCH:
        _, _, sizes, mtimes, others, dropped = reply
        target.cache_drop_failures += dropped
        results = {other[0]: _result(target, request.request(other[0]), other) for other in others}
        return BatchResult(request, sizes, mtimes, results)
    if status == reader.OK:
        digest, fields, holes, anomaly, drop_failed = reply[2:]
        if drop_failed:
            target.cache_drop_failures += 1
        size, mtime = fields[6], fields[14]
        return HashResult(request, digest, size, mtime, None, fields, holes, anomaly)
    if status == reader.NOT_REGULAR:
        return HashResult(request, error=NotRegularFile(request.path, reply[2]))
    if status == reader.BUG:
        what = request.paths[0] if isinstance(request, DigestBatch) else request.path
        raise RuntimeError(f"reading {target.display(what)} failed: {reply[2]}")
    return HashResult(request, error=OSError(status, reply[2], request.path))


_local = threading.local()


def _local_jobs() -> reader.Jobs:
    """The job runner of this thread (with its own read buffer)."""
    jobs = getattr(_local, "jobs", None)
    if jobs is None:
        jobs = _local.jobs = reader.Jobs()
    return jobs
