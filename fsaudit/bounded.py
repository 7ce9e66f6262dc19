"""Readers that hold a hostile stream to a bound: a decompression cap, a window of a file, zstd.

Archives and payloads read from an audited system (package files in its caches) may be damaged or
made hostile. What a file claims never decides how much is read: a decompressed stream may not grow
beyond a generous multiple of the file's size, a member is read through a window of its own length,
and the zstd program runs with a clean environment and its failure is an error, not an early end.
Every reader raises the caller's own error type, with words naming what it reads, so a checker's
messages stay its own while the bound is written once.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Type

CHUNK = 1 << 20
# Real package archives decompress to at most ~15 times their size (measured over Debian 12's);
# beyond this many times plus a floor, it is a decompression bomb, not a package.
MAX_RATIO = 100
MIN_DECOMPRESSED = 64 << 20
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def decompressed_limit(size: int) -> int:
    """How many decompressed bytes a compressed file of `size` bytes may deliver."""
    return MIN_DECOMPRESSED + MAX_RATIO * max(size, 0)


class Capped(io.RawIOBase):
    """A reader that refuses to deliver more than `limit` bytes: `error` is raised, saying that
    `what` ("the payload") is a decompression bomb."""

    def __init__(self, stream, limit: int, error: Type[Exception], what: str):
        self.stream = stream
        self.limit = limit
        self.error = error
        self.what = what
        self.delivered = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        if not data:
            return 0
        self.delivered += len(data)
        if self.delivered > self.limit:
            bomb = f"{self.what} decompresses to more than {self.limit:,} bytes: a decompression bomb"
            raise self.error(bomb)
        buffer[: len(data)] = data
        return len(data)


class Window(io.RawIOBase):
    """The next `length` bytes of a stream, from where it stands. A stream that ends first raises
    `short()` when given, else the window merely ends there too."""

    def __init__(self, stream, length: int, short: Callable[[], Exception] | None = None):
        self.stream = stream
        self.left = length
        self.short = short

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            return 0
        count = self.stream.readinto(memoryview(buffer)[: min(len(buffer), self.left)])
        if not count:
            if self.short is not None:
                raise self.short()
            return 0
        self.left -= count
        return count

    def skip(self) -> None:
        """Read past what is left of the window (the next member starts after it)."""
        while self.left > 0:
            if not self.read(min(self.left, CHUNK)):
                return


class _ProcessOutput(io.RawIOBase):
    """The output of a decompressing program; its failure (a damaged stream) is an error at the end
    of its output, instead of an output that merely ends early."""

    def __init__(self, process: subprocess.Popen, error: Type[Exception]):
        self.process = process
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.process.stdout.readinto(buffer)
        if not count:
            try:
                status = self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                status = None
            if status != 0:
                raise self.error("the zstd stream is damaged or cut short")
        return count


@contextmanager
def zstd_stream(raw: IO[bytes], error: Type[Exception], what: str) -> Iterator[IO[bytes]]:
    """The decompressed zstd stream `raw`: the zstandard module, else the zstd program (clean
    environment, killed on leaving). Without either, `error` says that `what` ("a zstd payload")
    needs one."""
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        yield zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return
    program = shutil.which("zstd", path=_ENV["PATH"])
    if not program:
        raise error(f"{what} needs the zstd program (apt-get install zstd) or the zstandard module")
    process = subprocess.Popen(
        [program, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_ENV
    )
    feeder = threading.Thread(target=_feed, args=(raw, process), daemon=True)
    feeder.start()
    try:
        yield io.BufferedReader(_ProcessOutput(process, error), CHUNK)
    finally:
        process.stdout.close()
        process.kill()
        process.wait()
        feeder.join(timeout=5)


def _feed(raw: IO[bytes], process: subprocess.Popen) -> None:
    # Any failure to read the input (a read error, a window cut short) ends zstd's input: zstd then
    # fails on the stream cut short, which the reader reports.
    try:
        while True:
            chunk = raw.read(CHUNK)
            if not chunk:
                break
            process.stdin.write(chunk)
    except Exception:
        pass
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass
