"""The hashing engine every file-verifying checker shares: all cores, large reads, flat memory.

hashlib releases the GIL while it hashes a large buffer, so plain threads use every core. A file
whose size already differs from the expected one is not read at all.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional

from fsaudit.target import Target

BLOCK_SIZE = 1 << 20
BATCH = 16


@dataclass
class HashRequest:
    """A file to hash: its path inside the target, the algorithm, and what the caller needs back."""

    path: bytes
    algorithm: str = "md5"
    expected_size: int | None = None
    key: Any = None
    follow: bool = True
    # Bytes hashed before the content, given the file's size (git hashes b"blob <size>\0" first).
    prefix: Optional[Callable[[int], bytes]] = None
    # The host path when the caller already resolved it (Target.resolve with the same `follow`).
    host: Optional[bytes] = None


@dataclass
class HashResult:
    """The outcome for one request: a hex digest, or why there is none.

    `digest` is None when the file could not be read (`error` says why: FileNotFoundError,
    NotRegularFile, EIO, ...) or when its size differs from `expected_size` (no need to read it).
    """

    request: HashRequest
    digest: str | None = None
    size: int | None = None
    mtime: float | None = None
    error: OSError | None = None

    @property
    def size_differs(self) -> bool:
        expected = self.request.expected_size
        return self.error is None and expected is not None and self.size != expected


_local = threading.local()


def _buffer() -> memoryview:
    view = getattr(_local, "buffer", None)
    if view is None:
        view = _local.buffer = memoryview(bytearray(BLOCK_SIZE))
    return view


def hash_one(target: Target, request: HashRequest) -> HashResult:
    """Hash one file of the target; never raises for problems of the file itself."""
    result = HashResult(request)
    try:
        if request.host is not None:
            handle = target.open_host(request.host)
        else:
            handle = target.open(request.path, follow=request.follow)
        with handle:
            result.st = handle.st
            result.size = handle.st.st_size
            result.mtime = handle.st.st_mtime
            if request.expected_size is not None and result.size != request.expected_size:
                return result
            digest = hashlib.new(request.algorithm)
            if request.prefix is not None:
                digest.update(request.prefix(result.size))
            buffer = _buffer()
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(buffer[:count])
            result.digest = digest.hexdigest()
    except OSError as error:
        result.error = error
    return result


def _hash_batch(target: Target, batch: List[HashRequest]) -> List[HashResult]:
    return [hash_one(target, request) for request in batch]


def _batches(requests: Iterable[HashRequest], size: int) -> Iterator[List[HashRequest]]:
    batch: List[HashRequest] = []
    for request in requests:
        batch.append(request)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def hash_files(target: Target, requests: Iterable[HashRequest], workers: int = 1) -> Iterator[HashResult]:
    """Hash files on `workers` threads, yielding results in request order.

    Requests go to the threads in small batches (one hand-over per batch, not per file: most
    packaged files are small), and only a few batches per worker are in flight, so memory stays
    flat however many files there are and the caller may feed requests from a generator.
    """
    workers = max(1, int(workers))
    if workers == 1:
        for request in requests:
            yield hash_one(target, request)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsaudit-hash") as pool:
        for batch in _batches(requests, BATCH):
            pending.append(pool.submit(_hash_batch, target, batch))
            if len(pending) >= workers * 4:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
