"""The worker processes that run the `content` validators, each under a memory cap and a time limit.

A format validator parses bytes an attacker wrote: a 21-byte `.pyc` can announce a tuple of 2^31
items, a small JSON file millions of nested objects, a compressed file hundreds of GiB, and a C
parser can crash. None of that may reach the audit process. So the audit process only opens files
(through the Target: inside the root, no final symlink, regular files) and hands each descriptor to a
worker over a Unix socket; the worker caps its own address space at start, runs the validator, and
answers with one small JSON message. A worker that exceeds its time is killed and replaced; one that
dies is replaced; either way the file is reported as not fully checked, never as sound.

Run as `python -I -m fsaudit_checks.content.worker FD MEMORY_BYTES`.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import asdict
from typing import List, Optional

from fsaudit_checks.content import formats

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 1 << 20
WORKER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class WorkerFailed(Exception):
    """The worker could not finish the file: it took too long, ran out of memory or died."""


def _send(sock: socket.socket, message: dict, fds: List[int] = ()) -> None:
    data = json.dumps(message).encode()
    payload = _LENGTH.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], list(fds))
        payload = payload[sent:]
    sock.sendall(payload)


def _receive(sock: socket.socket, with_fds: bool = False):
    """(message, fds), or (None, []) when the other end closed the socket."""
    fds: List[int] = []
    if with_fds:
        head, fds, _flags, _address = socket.recv_fds(sock, _LENGTH.size, 4)
    else:
        head = sock.recv(_LENGTH.size)
    if not head:
        return None, fds
    head += _exactly(sock, _LENGTH.size - len(head))
    (length,) = _LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        raise WorkerFailed(f"a message of {length:,} bytes")
    return json.loads(_exactly(sock, length)), fds


def _exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(min(count, 1 << 16))
        if not chunk:
            raise WorkerFailed("the worker closed its socket mid-message")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


# -- the audit process's side -----------------------------------------------------------------------


class Worker:
    """One worker process and the socket to it."""

    def __init__(self, memory: int):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "fsaudit_checks.content.worker",
                    str(child.fileno()),
                    str(memory),
                ],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": WORKER_PATH, "LC_ALL": "C.UTF-8"},
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.sock = parent

    def check(self, request: dict, fds: List[int], timeout: float) -> dict:
        self.sock.settimeout(timeout)
        try:
            _send(self.sock, request, fds)
            answer, _ = _receive(self.sock)
        except socket.timeout:
            self.stop()
            raise WorkerFailed(f"checking it took longer than {timeout:g} s") from None
        except (OSError, ValueError) as error:
            self.stop()
            raise WorkerFailed(f"the worker failed: {error}") from None
        if answer is None:
            status = self.stop()
            if status is not None and status < 0:
                try:
                    name = signal.Signals(-status).name
                except ValueError:
                    name = f"signal {-status}"
                raise WorkerFailed(f"the parser crashed on it ({name})")
            raise WorkerFailed(f"the worker ended (status {status})")
        return answer

    def stop(self) -> Optional[int]:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()


class WorkerPool:
    """Up to `size` workers shared by the checker's threads; started when first needed."""

    def __init__(self, size: int, memory: int, timeout: float, limits: formats.Limits):
        self.memory = memory
        self.timeout = timeout
        self.limits = limits
        self._idle: queue.Queue = queue.Queue()
        self._all: List[Worker] = []
        self._lock = threading.Lock()
        for _ in range(size):
            self._idle.put(None)

    def check(self, fmt: formats.Format, job: formats.Job, handle, source=None) -> Optional[formats.Problem]:
        """Run `fmt`'s validator on `handle` in a worker: None, a Problem; raises Unsupported, Cut."""
        request = {
            "format": fmt.name,
            "path": os.fsdecode(job.path),
            "source_path": os.fsdecode(job.source_path) if job.source_path else None,
            "limits": asdict(self.limits),
        }
        fds = [handle.fileno()] + ([source.fileno()] if source is not None else [])
        worker = self._idle.get()
        try:
            if worker is None:
                worker = Worker(self.memory)
                with self._lock:
                    self._all.append(worker)
            try:
                answer = worker.check(request, fds, self.timeout)
            except WorkerFailed as failure:
                worker = None
                raise formats.Cut(str(failure)) from None
        finally:
            self._idle.put(worker)
        return _outcome(answer)

    def close(self) -> None:
        with self._lock:
            for worker in self._all:
                if worker.process.poll() is None:
                    worker.stop()
            self._all.clear()


def _outcome(answer: dict) -> Optional[formats.Problem]:
    kind = answer.get("kind")
    if kind == "ok":
        return None
    if kind == "problem":
        path = answer.get("path")
        return formats.Problem(answer["code"], answer["message"], os.fsencode(path) if path else None)
    if kind == "unsupported":
        raise formats.Unsupported(answer["reason"])
    if kind == "cut":
        raise formats.Cut(answer["reason"])
    raise formats.Cut(f"the check failed: {answer.get('reason', 'no answer')}")


# -- the worker's side ------------------------------------------------------------------------------


class _Opened:
    """A received descriptor as the validators expect an open file: read, seek, and its `st`."""

    def __init__(self, fd: int):
        self.raw = os.fdopen(fd, "rb", buffering=0)
        self.st = os.fstat(fd)
        self.raw.seek(0)

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def close(self) -> None:
        self.raw.close()


def _run(request: dict, fds: List[int]) -> dict:
    opened = [_Opened(fd) for fd in fds]
    try:
        fmt = next(f for f in formats.FORMATS if f.name == request["format"])
        job = formats.Job(
            path=os.fsencode(request["path"]),
            limits=formats.Limits(**request["limits"]),
            source=opened[1] if len(opened) > 1 else None,
            source_path=os.fsencode(request["source_path"]) if request.get("source_path") else None,
        )
        problem = fmt.check(opened[0], job)
    except formats.Unsupported as reason:
        return {"kind": "unsupported", "reason": str(reason)}
    except formats.Cut as reason:
        return {"kind": "cut", "reason": str(reason)}
    except MemoryError:
        return {"kind": "cut", "reason": "checking it needs more memory than the worker may use"}
    except RecursionError:
        return {"kind": "cut", "reason": "it is nested too deeply to check"}
    except Exception as error:  # a validator's own failure: this file, not the audit
        return {"kind": "error", "reason": f"{type(error).__name__}: {str(error)[:200]}"}
    finally:
        for handle in opened:
            handle.close()
    if problem is None:
        return {"kind": "ok"}
    path = os.fsdecode(problem.path) if problem.path else None
    return {"kind": "problem", "code": problem.code, "message": problem.message, "path": path}


def main(argv: List[str]) -> int:
    fd, memory = int(argv[0]), int(argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sock = socket.socket(fileno=fd)
    while True:
        try:
            request, fds = _receive(sock, with_fds=True)
        except (OSError, ValueError, WorkerFailed):
            return 1
        if request is None:
            return 0
        try:
            answer = _run(request, fds)
        except MemoryError:
            answer = {"kind": "cut", "reason": "checking it needs more memory than the worker may use"}
        _send(sock, answer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
