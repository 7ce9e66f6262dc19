"""Where the reading engine's reads run: worker processes for the cores, threads of this process else.

The worker processes run `fsaudit.reader` (standard library only), started from its source text
with `python -I -S`: a fresh interpreter, never a fork of this threaded process, and one that starts
wherever fsaudit runs, also from the fleet's in-memory bootstrap on a VM. They are started on first
use and kept for the rest of the audit (a check may hand over thousands of small batches); each has
its own reader threads. They end with this process: end-of-file on their stdin ends them at once,
PR_SET_PDEATHSIG if this process dies without closing it, and `shutdown()` at exit. When one of them
ends unexpectedly all are ended, and the calls in progress read the rest on threads.

Callers register an inbox (a queue) and get an epoch; replies for that epoch arrive in the inbox as
("done", [reply, ...]), and ("dead",) when the workers are gone.
"""

from __future__ import annotations

import atexit
import logging
import marshal
import os
import queue
import select
import sys
import threading
from typing import TYPE_CHECKING, Dict, List, Optional

from fsaudit import reader

if TYPE_CHECKING:
    import subprocess

LOG = logging.getLogger(__name__)

_POLL_SECONDS = 0.25
# A worker runs fsaudit.reader sent on its stdin: as code (marshal'ed by this same interpreter; compiling
# the source took each worker 4 ms), or as source where no code can be had.
_BOOT = (
    "import sys,marshal;d=sys.stdin.buffer.read(int(sys.argv[2]));"
    'exec(marshal.loads(d) if sys.argv[3]=="code" else compile(d,"fsaudit-reader","exec"))'
)


def wait(inbox: queue.SimpleQueue, pool: Optional[Workers] = None):
    """The next message of an inbox, reading the worker processes' replies meanwhile when `pool` is
    given; waiting in short steps so that Ctrl-C is seen at once."""
    while True:
        try:
            return inbox.get_nowait()
        except queue.Empty:
            pass
        if pool is not None and pool.alive:
            pool.poll(_POLL_SECONDS)
            continue
        try:
            return inbox.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue


def drain(inbox: queue.SimpleQueue, pool: Optional[Workers], block: bool, done, dead) -> None:
    """Hand every message waiting in `inbox` to `done(replies)`, or to `dead()` when the workers are
    gone; with `block`, wait for the first one (reading the workers' replies meanwhile)."""
    if pool is not None and not block:
        pool.poll(0)
    while True:
        if block:
            message = wait(inbox, pool)
            block = False
        else:
            try:
                message = inbox.get_nowait()
            except queue.Empty:
                return
        if message[0] == "done":
            done(message[1])
        else:
            dead()


def wake(pool: Optional[Workers]) -> None:
    """Tell a caller waiting in `wait` with `pool` that a thread put something in its inbox."""
    if pool is not None:
        pool.wake()


class Threads:
    """Daemon threads of this process running queued calls `(function, *arguments)`, started as the
    work needs them, up to the largest number asked for. Daemon threads: an interrupted audit does
    not wait for a read in progress."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.count = 0
        self.idle = 0
        self.limit = 0
        self.lock = threading.Lock()

    def allow(self, count: int) -> Threads:
        with self.lock:
            self.limit = max(self.limit, count)
        return self

    def put(self, work: tuple) -> None:
        self.queue.put(work)
        with self.lock:
            if self.queue.qsize() > self.idle and self.count < self.limit:
                self.count += 1
                self.idle += 1
                threading.Thread(target=self._serve, name=f"fsaudit-read-{self.count}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            function, *arguments = self.queue.get()
            with self.lock:
                self.idle -= 1
            try:
                function(*arguments)
            finally:
                with self.lock:
                    self.idle += 1


_THREADS = Threads()


def threads(count: int) -> Threads:
    """The threads of this process, up to `count` of them at work at once (or more, when asked for
    by another caller)."""
    return _THREADS.allow(count)


class Workers:
    """The worker processes of this fsaudit process (see the module's docstring). Their replies are
    read by the thread that waits for them (`wait`), not by threads of their own: on a busy core,
    listener threads cost more in GIL hand-overs than they save."""

    current: Optional[Workers] = None
    # Why worker processes are not used: set once they could not start or ended unexpectedly.
    failure: str = ""
    lock = threading.Lock()

    def __init__(self, count: int, threads_each: int):
        import subprocess  # here: an audit that starts no worker does not pay for it

        self.shape = (count, threads_each)
        self.inboxes: Dict[int, queue.SimpleQueue] = {}
        self.next_epoch = 0
        self.processes: List[subprocess.Popen] = []
        self.outstanding: List[int] = [0] * count
        self.buffers: List[bytearray] = [bytearray() for _ in range(count)]
        self.reading = threading.RLock()
        self.alive = True
        # Threads of this process that finish work for a caller waiting here write a byte to it.
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        form, source = _reader_program()
        try:
            for _ in range(count):
                process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _BOOT, str(threads_each), str(len(source)), form],
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
        self.sources = {process.stdout.fileno(): index for index, process in enumerate(self.processes)}
        # poll, not select: an audit may hold more than 1024 descriptors when the workers start.
        self.poller = select.poll()
        for fd in (self.wake_read, *self.sources):
            self.poller.register(fd, select.POLLIN)

    def register(self, inbox: queue.SimpleQueue) -> int:
        with self.lock:
            self.next_epoch += 1
            self.inboxes[self.next_epoch] = inbox
            if not self.alive:
                inbox.put(("dead",))
            return self.next_epoch

    def unregister(self, epoch: int, cancel: bool) -> None:
        """The caller is done with `epoch`; `cancel` drops its jobs still queued or being read."""
        with self.lock:
            self.inboxes.pop(epoch, None)
        if cancel:
            for index in range(len(self.processes)):
                self._write(index, ("cancel", epoch))

    def send(self, kind: str, epoch: int, header: tuple, jobs: List[tuple]) -> bool:
        """Give jobs of one kind ("hash", "scan") to the least busy worker; False when none is left."""
        with self.lock:
            index = min(range(len(self.processes)), key=self.outstanding.__getitem__)
        return self.send_to(index, kind, epoch, header, jobs)

    def send_to(self, index: int, kind: str, epoch: int, header: tuple, jobs: List[tuple]) -> bool:
        """Give jobs to the worker `index`; False when none is left."""
        with self.lock:
            self.outstanding[index] += len(jobs)
        return self._write(index, (kind, epoch, header, jobs))

    def _write(self, index: int, message) -> bool:
        if not self.alive:
            return False
        try:
            reader.write_frame(self.processes[index].stdin.fileno(), message)
        except (OSError, ValueError):
            self._lost()
            return False
        return True

    def wake(self) -> None:
        try:
            os.write(self.wake_write, b"!")
        except (OSError, ValueError):  # full (someone will wake up anyway), or closed
            pass

    def poll(self, timeout: float) -> None:
        """Read what the workers sent, waiting up to `timeout` for anything (or a wake-up), and put
        each reply in its caller's inbox."""
        if not self.reading.acquire(timeout=timeout):
            return  # another thread is reading for everyone
        try:
            if not self.alive:
                return
            for fd, _ in self.poller.poll(timeout * 1000):
                if fd == self.wake_read:
                    _drain(fd)
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self._lost()
                    return
                self._frames(self.sources[fd], chunk)
        finally:
            self.reading.release()

    def _frames(self, index: int, chunk: bytes) -> None:
        buffer = self.buffers[index]
        buffer += chunk
        start = 0
        while len(buffer) - start >= 4:
            size = int.from_bytes(buffer[start : start + 4], "little")
            if len(buffer) - start - 4 < size:
                break
            message = marshal.loads(buffer[start + 4 : start + 4 + size])
            start += 4 + size
            if message[0] != "done":
                continue
            with self.lock:
                self.outstanding[index] -= len(message[2])
                inbox = self.inboxes.get(message[1])
            if inbox is not None:
                inbox.put(("done", message[2]))
        del buffer[:start]

    def _lost(self) -> None:
        with self.lock:
            if not self.alive:
                return
            self.alive = False
            inboxes = list(self.inboxes.values())
        if Workers.current is self:
            Workers.failure = "a worker process ended unexpectedly"
        for inbox in inboxes:
            inbox.put(("dead",))
        self.close()

    def close(self) -> None:
        """End every worker now: closing its stdin ends a worker at once, kill() one that is stuck."""
        self.alive = False
        if Workers.current is self:
            Workers.current = None
        for process in self.processes:
            for end in (process.stdin.close, process.kill):
                try:
                    end()
                except OSError:
                    pass
        with self.reading:  # not while another thread polls them
            for fd in (self.wake_read, self.wake_write):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.wake_read = self.wake_write = -1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:  # EAGAIN: empty
        pass


def running(count: int, threads_total: int) -> Optional[Workers]:
    """The worker processes already running for `count` jobs with `threads_total` threads, if any."""
    current = Workers.current
    threads_each = max(1, -(-threads_total // count))
    if current is not None and current.alive and current.shape == (count, threads_each):
        return current
    return None


def workers(count: int, threads_total: int) -> Optional[Workers]:
    """Worker processes for `count` jobs with `threads_total` reader threads in all, or None where
    none can start (`Workers.failure` says why)."""
    threads_each = max(1, -(-threads_total // count))
    with Workers.lock:
        if Workers.failure:
            return None
        current = Workers.current
        if current is not None and current.shape == (count, threads_each) and current.alive:
            return current
        if current is not None:
            current.close()
        if not sys.executable:
            Workers.failure = "worker processes could not start: no Python interpreter to run"
            return None
        import subprocess

        try:
            Workers.current = Workers(count, threads_each)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            Workers.failure = f"worker processes could not start: {error}"
            LOG.debug("worker processes could not start", exc_info=True)
            return None
        return Workers.current


def _reader_program() -> tuple:
    """("code", its marshal'ed code) or ("source", its text) of fsaudit.reader, from wherever fsaudit was
    imported (a file, a zip, memory)."""
    spec = reader.__spec__
    loader = spec.loader if spec is not None else None
    try:
        code = loader.get_code(spec.name)  # the cached bytecode of an installed fsaudit
    except Exception:  # a loader without code (ImportError, AttributeError): the source, then
        code = None
    if code is not None:
        return "code", marshal.dumps(code)
    source = loader.get_source(spec.name) if loader is not None else None
    if not source:
        raise ValueError("the source of fsaudit.reader is not available")
    return "source", source.encode("utf-8")


def shutdown() -> None:
    """End the worker processes and reap them (at exit)."""
    current = Workers.current
    if current is not None:
        current.close()
        for process in current.processes:
            try:
                process.wait(timeout=0.5)
            except Exception:  # subprocess.TimeoutExpired: a worker stuck in the kernel
                pass


atexit.register(shutdown)
