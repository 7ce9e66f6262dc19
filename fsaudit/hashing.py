"""The reading engine every file-verifying checker shares: as fast as the disk, as fast as the cores.

On the network storage the audits are made for, a read costs about a millisecond and many can be in
flight, so the number of reads in flight is set by the disk (`--io-depth`, default 32), not by the
core count. Hashing runs in worker processes, one per core (`--jobs`), so the cores are not shared
through the GIL; each worker is fed by its own reader threads (io depth / jobs of them). The workers
run `fsaudit.reader` (standard library only) started from its source with `python -I -S`: a fresh
interpreter (no fork of this threaded process), which also starts from the fleet's in-memory
bootstrap. Where no process can be started, the same reads run on threads of this process, and the
check's stats say so (`reading`). Workers end with this process (end-of-file on their stdin, and
PR_SET_PDEATHSIG), and at once when the user interrupts.

Requests are read in order of their path within a window (files of one directory together), results
come back in request order, and only a bounded number are in flight: memory stays flat however many
files there are, and callers may feed requests from a generator.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

from fsaudit import reader
from fsaudit.reader import ABSURD_SIZE, SPARSE, NotRegularFile
from fsaudit.target import Target

LOG = logging.getLogger(__name__)

DEFAULT_IO_DEPTH = 32
BLOCK_SIZE = reader.BLOCK_SIZE
# Jobs handed to a worker in one message, and the window of requests sorted by path before that.
BATCH = 16
_WINDOW = 64
_POLL_SECONDS = 0.25
__all__ = ["ABSURD_SIZE", "SPARSE", "HashRequest", "HashResult", "hash_files", "hash_one", "read_files"]


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
    st: os.stat_result | None = None
    holes: int = 0
    anomaly: str | None = None

    @property
    def size_differs(self) -> bool:
        expected = self.request.expected_size
        return self.error is None and expected is not None and self.size != expected


def hash_one(target: Target, request: HashRequest) -> HashResult:
    """Hash one file of the target in this thread; never raises for problems of the file itself."""
    return _result(target, request, _run_here(target, request, lambda: False, bytearray(BLOCK_SIZE)))


def hash_files(
    target: Target,
    requests: Iterable[HashRequest],
    settings: Union[int, Any] = 1,
    stats: Dict[str, Any] | None = None,
) -> Iterator[HashResult]:
    """Hash files, yielding one HashResult per request, in request order.

    `settings` is the checkers' Context (its `jobs`, `io_depth` and `progress`), or a number of jobs.
    `stats`, when given, gets a `reading` entry saying how the files were read (worker processes,
    or threads and why).
    """
    if isinstance(settings, int):
        jobs, depth, progress = settings, DEFAULT_IO_DEPTH, None
    else:
        jobs = settings.jobs
        depth = getattr(settings, "io_depth", None) or DEFAULT_IO_DEPTH
        progress = getattr(settings, "progress", None)
    return _Call(target, max(1, int(jobs)), max(1, int(depth)), progress, stats).run(iter(requests))


def read_files(
    target: Target, items: Iterable[Any], read: Callable[[Any], Any], settings: Union[int, Any] = 1
) -> Iterator[Any]:
    """`read(item)` for every item on `io depth` threads of this process, results in item order.

    For checkers whose reading is their own Python code (a format validator): the reads overlap
    like the engine's. `read` must not raise for problems of the file (return them). Ctrl-C stops
    the wait at once; threads finish their current item in the background.
    """
    depth = DEFAULT_IO_DEPTH if isinstance(settings, int) else getattr(settings, "io_depth", 0)
    depth = max(1, int(depth or DEFAULT_IO_DEPTH))
    pool = _threads(depth)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    pending: Dict[int, Any] = {}
    submitted = taken = 0
    iterator = iter(items)
    exhausted = False

    def call(seq: int, item: Any) -> None:
        try:
            inbox.put((seq, True, read(item)))
        except BaseException as error:  # re-raised in the caller's thread
            inbox.put((seq, False, error))

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
            seq, ok, value = _get(inbox)
            pending[seq] = (ok, value)
        ok, value = pending.pop(taken)
        taken += 1
        if not ok:
            raise value
        yield value


# -- one call of hash_files ---------------------------------------------------------------------------


# -- one call of hash_files ---------------------------------------------------------------------------


class _Call:
    """The requests of one `hash_files` call on their way through the workers and back in order."""

    def __init__(self, target: Target, jobs: int, depth: int, progress, stats):
        self.target = target
        self.jobs = jobs
        self.depth = depth
        self.progress = progress
        self.stats = stats
        self.capacity = max(4 * depth, 4 * BATCH)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.pool = _workers(jobs, depth) if jobs > 1 else None
        self.remote = self.pool is not None
        self.threads = _threads(1 if self.remote else depth)
        self.epoch = self.pool.register(self.inbox) if self.remote else None
        # seq -> (request, True while a worker process holds it)
        self.in_flight: Dict[int, tuple] = {}
        self.done: Dict[int, HashResult] = {}
        self._say_how()

    def _say_how(self) -> None:
        if self.stats is None:
            return
        reads = f"{self.depth} reads in flight"
        if self.remote:
            how = f"{len(self.pool.processes)} worker processes, {reads}"
        elif self.jobs == 1:
            how = f"threads of one process (--jobs 1), {reads}"
        else:
            how = f"threads of one process ({_Workers.failure}), {reads}"
        self.stats["reading"] = how

    def run(self, requests: Iterator[HashRequest]) -> Iterator[HashResult]:
        window: List[tuple] = []
        next_seq = next_out = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(self.in_flight) + len(window) < self.capacity:
                    try:
                        request = next(requests)
                    except StopIteration:
                        exhausted = True
                        break
                    window.append((next_seq, request))
                    next_seq += 1
                    if len(window) >= _WINDOW:
                        self._dispatch(window)
                        window = []
                if window and (exhausted or len(self.in_flight) + len(window) >= self.capacity):
                    self._dispatch(window)
                    window = []
                self._receive(block=False)
                if next_out in self.done:
                    result = self.done.pop(next_out)
                    next_out += 1
                    yield result
                    continue
                if exhausted and next_out == next_seq:
                    return
                self._receive(block=True)
        finally:
            self.cancelled = True
            if self.epoch is not None:
                self.pool.unregister(self.epoch, cancel=bool(self.in_flight))

    def _dispatch(self, window: List[tuple]) -> None:
        """Hand a window of requests out, in path order (the files of a directory together)."""
        window.sort(key=lambda item: item[1].host or item[1].path)
        remote: List[tuple] = []
        for seq, request in window:
            if self.remote and not callable(request.prefix):
                remote.append((seq, request))
            else:
                self._on_thread(seq, request)
        for start in range(0, len(remote), BATCH):
            batch = remote[start : start + BATCH]
            if self.remote and self.pool.send(self.epoch, self.target, batch):
                for seq, request in batch:
                    self.in_flight[seq] = (request, True)
            else:
                for seq, request in batch:
                    self._on_thread(seq, request)

    def _on_thread(self, seq: int, request: HashRequest) -> None:
        self.in_flight[seq] = (request, False)
        self.threads.put((self._run_on_thread, seq, request))

    def _run_on_thread(self, seq: int, request: HashRequest) -> None:
        if self.cancelled:
            return
        try:
            reply = _run_here(self.target, request, lambda: self.cancelled, _thread_buffer())
        except BaseException as error:  # a bug: raised in the caller's thread
            reply = (0, reader.BUG, f"{type(error).__name__}: {error}")
        self.inbox.put(("done", [(seq,) + reply[1:]]))

    def _receive(self, block: bool) -> None:
        while True:
            if block:
                message = _get(self.inbox)
                block = False
            else:
                try:
                    message = self.inbox.get_nowait()
                except queue.Empty:
                    return
            if message[0] == "done":
                for reply in message[1]:
                    self._complete(reply)
            else:
                self._rescue()

    def _complete(self, reply: tuple) -> None:
        entry = self.in_flight.pop(reply[0], None)
        if entry is None:
            return
        result = _result(self.target, entry[0], reply)
        self.done[reply[0]] = result
        if self.progress is not None and result.digest is not None:
            self.progress.add_bytes(result.size or 0)

    def _rescue(self) -> None:
        """The worker processes are gone: what they held, and the rest of the call, runs on threads."""
        if not self.remote:
            return
        self.remote = False
        self.threads = _threads(self.depth)
        self._say_how()
        lost = [(seq, entry[0]) for seq, entry in self.in_flight.items() if entry[1]]
        LOG.debug("the reading workers ended; %d files are read on threads instead", len(lost))
        for seq, request in lost:
            self._on_thread(seq, request)


def _get(inbox: queue.SimpleQueue):
    """The next message, waiting in short steps so that Ctrl-C is seen at once."""
    while True:
        try:
            return inbox.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue


def _run_here(target: Target, request: HashRequest, stopped, buffer) -> tuple:
    """A reply tuple (as a worker sends it) for one request read in this process."""
    try:
        host = request.host if request.host is not None else target.resolve(request.path, request.follow)
    except OSError as error:
        return (0, error.errno or errno.EIO, error.strerror or str(error))
    job = (0, host, reader.HOST, request.algorithm, _expected(request), request.prefix)
    return reader.run_job(job, target.root, target.drop_cache, {}, stopped, buffer)


def _expected(request: HashRequest) -> int:
    return -1 if request.expected_size is None else request.expected_size


def _result(target: Target, request: HashRequest, reply: tuple) -> HashResult:
    status = reply[1]
    if status == reader.OK:
        digest, fields, holes, anomaly, drop_failed = reply[2:]
        st = reader.stat_result(fields)
        if drop_failed:
            target.cache_drop_failures += 1
        return HashResult(request, digest, st.st_size, st.st_mtime, None, st, holes, anomaly)
    if status == reader.NOT_REGULAR:
        return HashResult(request, error=NotRegularFile(request.path, reply[2]))
    if status == reader.BUG:
        raise RuntimeError(f"reading {target.display(request.path)} failed: {reply[2]}")
    return HashResult(request, error=OSError(status, reply[2], request.path))


_local = threading.local()


def _thread_buffer() -> bytearray:
    buffer = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = bytearray(BLOCK_SIZE)
    return buffer


# -- threads of this process ------------------------------------------------------------------------


class _Threads:
    """Daemon threads of this process running queued calls: used without worker processes, for
    requests only this process can read, and by `read_files`. Daemon threads: an interrupted audit
    does not wait for a read in progress."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.count = 0
        self.lock = threading.Lock()

    def grow(self, count: int) -> None:
        with self.lock:
            while self.count < count:
                threading.Thread(target=self._serve, name=f"fsaudit-read-{self.count}", daemon=True).start()
                self.count += 1

    def put(self, work: tuple) -> None:
        self.queue.put(work)

    def _serve(self) -> None:
        while True:
            function, *arguments = self.queue.get()
            function(*arguments)


_THREADS = _Threads()


def _threads(count: int) -> _Threads:
    _THREADS.grow(count)
    return _THREADS


# -- worker processes ---------------------------------------------------------------------------------

_BOOT = 'import sys;exec(compile(sys.stdin.buffer.read(int(sys.argv[2])),"fsaudit-reader","exec"))'


class _Workers:
    """The worker processes of this fsaudit process: started on first use, kept for later calls (a
    check may hash thousands of small batches), ended with this process. When one of them ends
    unexpectedly all are ended, and every call in progress reads the rest on threads."""

    current: Optional[_Workers] = None
    # Why worker processes are not used (set once they could not start or ended unexpectedly).
    failure: str = ""
    lock = threading.Lock()

    def __init__(self, count: int, threads: int):
        self.shape = (count, threads)
        self.inboxes: Dict[int, queue.SimpleQueue] = {}
        self.next_epoch = 0
        self.processes: List[subprocess.Popen] = []
        self.outstanding: List[int] = [0] * count
        self.write_lock = threading.Lock()
        self.alive = True
        source = _reader_source()
        try:
            for _ in range(count):
                process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _BOOT, str(threads), str(len(source))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    close_fds=True,
                )
                self.processes.append(process)
                process.stdin.write(source)
                process.stdin.flush()
        except BaseException:
            self.close()
            raise
        for index in range(count):
            threading.Thread(
                target=self._listen, args=(index,), name=f"fsaudit-worker-{index}", daemon=True
            ).start()

    def register(self, inbox: queue.SimpleQueue) -> int:
        with self.lock:
            self.next_epoch += 1
            self.inboxes[self.next_epoch] = inbox
            if not self.alive:
                inbox.put(("dead",))
            return self.next_epoch

    def unregister(self, epoch: int, cancel: bool) -> None:
        with self.lock:
            self.inboxes.pop(epoch, None)
        if cancel:
            for index in range(len(self.processes)):
                self._write(index, ("cancel", epoch))

    def send(self, epoch: int, target: Target, batch: List[tuple]) -> bool:
        """Give a batch of (seq, request) to the least busy worker; False when none is left."""
        jobs = []
        for seq, request in batch:
            if request.host is not None:
                path, how = request.host, reader.HOST
            else:
                path = request.path if isinstance(request.path, bytes) else os.fsencode(request.path)
                how = reader.FOLLOW if request.follow else reader.RESOLVE
            jobs.append((seq, path, how, request.algorithm, _expected(request), request.prefix))
        with self.lock:
            index = min(range(len(self.processes)), key=self.outstanding.__getitem__)
            self.outstanding[index] += len(jobs)
        return self._write(index, ("hash", epoch, target.root, bool(target.drop_cache), jobs))

    def _write(self, index: int, message) -> bool:
        if not self.alive:
            return False
        try:
            with self.write_lock:
                reader.write_frame(self.processes[index].stdin.fileno(), message)
        except (OSError, ValueError):
            self._lost()
            return False
        return True

    def _listen(self, index: int) -> None:
        stream = self.processes[index].stdout
        while True:
            try:
                message = reader.read_frame(stream)
            except (OSError, ValueError, EOFError):
                message = None
            if message is None:
                self._lost()
                return
            if message[0] != "done":
                continue
            with self.lock:
                self.outstanding[index] -= len(message[2])
                inbox = self.inboxes.get(message[1])
            if inbox is not None:
                inbox.put(("done", message[2]))

    def _lost(self) -> None:
        with self.lock:
            if not self.alive:
                return
            self.alive = False
            inboxes = list(self.inboxes.values())
        if _Workers.current is self:
            _Workers.failure = "a worker process ended unexpectedly"
        for inbox in inboxes:
            inbox.put(("dead",))
        self.close()

    def close(self) -> None:
        """End every worker now: closing its stdin ends a worker at once, kill() one that is stuck."""
        self.alive = False
        if _Workers.current is self:
            _Workers.current = None
        for process in self.processes:
            for end in (process.stdin.close, process.kill):
                try:
                    end()
                except OSError:
                    pass


def _workers(count: int, threads_total: int) -> Optional[_Workers]:
    """The worker processes for `count` jobs, or None (threads then) where none can start."""
    threads = max(1, -(-threads_total // count))
    with _Workers.lock:
        if _Workers.failure:
            return None
        current = _Workers.current
        if current is not None and current.shape == (count, threads) and current.alive:
            return current
        if current is not None:
            current.close()
        if not sys.executable:
            _Workers.failure = "worker processes could not start: no Python interpreter to run"
            return None
        try:
            _Workers.current = _Workers(count, threads)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            _Workers.failure = f"worker processes could not start: {error}"
            LOG.debug("worker processes could not start", exc_info=True)
            return None
        return _Workers.current


def _reader_source() -> bytes:
    """The source of fsaudit.reader, from wherever fsaudit was imported (a file, a zip, memory)."""
    spec = reader.__spec__
    source = spec.loader.get_source(spec.name) if spec is not None and spec.loader is not None else None
    if not source:
        raise ValueError("the source of fsaudit.reader is not available")
    return source.encode("utf-8")


def shutdown() -> None:
    """End the worker processes (at exit; also after an interrupted audit)."""
    current = _Workers.current
    if current is not None:
        current.close()
        for process in current.processes:
            try:
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass


atexit.register(shutdown)
