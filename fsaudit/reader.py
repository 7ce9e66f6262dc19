"""Reading the audited system one file or directory at a time: safely, boundedly, without changing it.

Standard library only, on purpose: the reading engine (`fsaudit.hashing`) starts this module's
`main()` as its worker processes from the module's source text (`python -I -S`), so workers start
wherever fsaudit runs, also from the fleet's in-memory bootstrap on a VM where no fsaudit is
installed; the engine's threads and `fsaudit.target` call the same functions in process.

Every open is read-only, without following a final symlink, without blocking on a FIFO, without
updating the access time (where the caller owns the file or is root), and reads only regular files.
A file is read no further than its size at open: a file that grows (or a hostile one that claims to
be larger than its filesystem) never makes a read unbounded.
"""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys
import time
from operator import itemgetter

# Bytes read (and hashed) at a time: a buffer that stays in the core's first-level cache, so the
# hash reads what the copy from the page cache just wrote (sha256 of 600 MB from the page cache in
# one process: 0.459 s with 64 KiB, 0.472 s with 1 MiB, medians of five).
BLOCK_SIZE = 1 << 16
# A file larger than one block is announced to the kernel this far ahead (POSIX_FADV_WILLNEED): on
# network storage its reads go out together, as large requests, instead of one small one per block.
AHEAD = 4 << 20
MAX_SYMLINKS = 40
NOATIME = getattr(os, "O_NOATIME", 0)
FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC
DIRECTORY_FLAGS = FILE_FLAGS | getattr(os, "O_DIRECTORY", 0)
# Files whose holes hold more than this are not hashed when no size is expected: gigabytes of zeros
# nobody wrote are an anomaly to report, not content to hash for minutes.
SPARSE_LIMIT = 64 << 20
# Hole and data regions examined per file; past that the holes are estimated from the blocks.
MAX_REGIONS = 4096
_DIR_CACHE_LIMIT = 65536
# How long a worker holds a walk's listing back to send it with others (seconds).
HOLD = 0.001

# What `hash_file` found besides the digest (`HashResult.anomaly`).
SPARSE = "sparse"
ABSURD_SIZE = "absurd-size"

_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def file_kind(mode: int) -> str:
    """A word for the type of file `mode` describes ("FIFO", "directory", ...)."""
    for test, word in _KINDS:
        if test(mode):
            return word
    return "unknown file type"


class NotRegularFile(OSError):
    """Something other than a regular file stands where a file was to be read."""

    def __init__(self, path: bytes, mode: int):
        self.kind = file_kind(mode)
        self.mode = mode
        super().__init__(errno.EINVAL, f"{self.kind} where a regular file was expected", path)


def open_noatime(path, flags: int = FILE_FLAGS, dir_fd: int | None = None) -> int:
    """os.open with O_NOATIME where the kernel allows it (the caller owns the file, or holds
    CAP_FOWNER), without it elsewhere: reading must not change what it reads, atime included."""
    if NOATIME:
        try:
            return os.open(path, flags | NOATIME, dir_fd=dir_fd)
        except PermissionError as error:
            if error.errno != errno.EPERM:
                raise
    return os.open(path, flags, dir_fd=dir_fd)


def components(path: bytes) -> list:
    return [part for part in path.split(b"/") if part and part != b"."]


class Resolver:
    """Paths inside a root resolved to paths on this machine, symlinks followed the way the audited
    system would: an absolute link points into the root, `..` never climbs out of it."""

    def __init__(self, root: bytes):
        self.root = root
        # directory components -> (its path on this machine, symlinks followed to get there, whether
        # a component on the way is missing, its mode as the walk found it or 0)
        self._dirs: dict = {}
        # the text before a path's last slash -> the directory it resolves to ("" for the live root)
        self._parents: dict = {}

    def resolve(self, path: bytes, follow: bool = True) -> bytes:
        """Every directory on the way is resolved; the last component only when `follow`. A component
        that does not exist ends resolution (opening the result then fails with ENOENT). A symlink
        loop raises OSError(ELOOP)."""
        head, _, name = path.rpartition(b"/")
        cacheable = name not in (b"", b".")
        parent = self._parents.get(head) if cacheable else None
        if parent is None:
            parts = components(path)
            if not parts:
                return self.root or b"/"
            parent = self.directory(tuple(parts[:-1]))
            if parent == b"/":
                # The live root: its entries are /etc, not //etc.
                parent = b""
            name = parts[-1]
            if cacheable:
                if len(self._parents) >= _DIR_CACHE_LIMIT:
                    self._parents.clear()
                self._parents[head] = parent
        if not follow:
            return parent + b"/" + name
        return self._walk(parent, [name], hops=0)[0]

    def directory(self, parts: tuple) -> bytes:
        return self._directory(parts)[0]

    def directory_mode(self, path: bytes) -> tuple:
        """(host path, mode) of `path` resolved as a directory, every symlink followed, from the
        walk that resolves the paths inside it (no system call when one did); the mode is 0 where
        the walk did not see it (the root, a component missing, a `..` at the end)."""
        found = self._directory(tuple(components(path)))
        return found[0], found[3]

    def _directory(self, parts: tuple) -> tuple:
        """(path, symlinks followed, whether a component is missing, mode or 0) of the directory of
        `parts`, walked from its parent's, which is cached too: each directory costs one lstat, not
        one per component of its path. Below a missing component the rest stays literal, as the
        kernel would not go on either."""
        cached = self._dirs.get(parts)
        if cached is None:
            if not parts:
                cached = (self.root or b"/", 0, False, 0)
            else:
                start, hops, missing, _ = self._directory(parts[:-1])
                if missing:
                    cached = (start + b"/" + parts[-1], hops, True, 0)
                else:
                    cached = self._walk(b"" if start == b"/" else start, [parts[-1]], hops)
            if len(self._dirs) >= _DIR_CACHE_LIMIT:
                self._dirs.clear()
            self._dirs[parts] = cached
        return cached

    def _walk(self, start: bytes, parts: list, hops: int) -> tuple:
        """(path, symlinks followed so far, whether a component is missing, the mode of the path
        reached or 0 where the walk did not lstat it) after walking `parts` from `start`."""
        current = start
        mode = 0
        pending = list(reversed(parts))
        while pending:
            name = pending.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                mode = 0
                if len(current) > len(self.root):
                    current = current.rsplit(b"/", 1)[0]
                    if len(current) < len(self.root):
                        current = self.root
                continue
            candidate = current + b"/" + name
            try:
                st = os.lstat(candidate)
            except OSError:
                # Missing or unreadable: the rest cannot be resolved; keep it literal.
                return candidate + b"".join(b"/" + part for part in reversed(pending)), hops, True, 0
            if not stat.S_ISLNK(st.st_mode):
                current = candidate
                mode = st.st_mode
                continue
            hops += 1
            if hops > MAX_SYMLINKS:
                inner = candidate[len(self.root) :] if self.root else candidate
                raise OSError(errno.ELOOP, "too many levels of symbolic links", inner)
            link = os.readlink(candidate)
            if link.startswith(b"/"):
                current = self.root
                mode = 0
            pending.extend(reversed(components(link)))
        return current or b"/", hops, False, mode


def holes(fd: int, st: os.stat_result) -> int:
    """Bytes of the file in holes (regions no data was ever written to, read as zeros); 0 when its
    blocks cover its size, as they do for every file written the ordinary way."""
    size = st.st_size
    allocated = st.st_blocks * 512
    if allocated >= size:
        return 0
    total = 0
    offset = 0
    try:
        for _ in range(MAX_REGIONS):
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            if hole >= size:
                return total
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                data = size  # a hole up to the end
            total += min(data, size) - hole
            offset = data
            if offset >= size:
                return total
    except (AttributeError, OSError):
        pass
    # SEEK_HOLE unsupported or too many regions: what the blocks allow.
    return max(total, size - allocated)


def hash_file(host: bytes, algorithm: str, expected_size, prefix, drop_cache: bool, stopped, buffer) -> tuple:
    """Hash the regular file at `host`: (digest or None, stat, holes, anomaly, cache drop failed).

    The digest is None when the size differs from `expected_size` (nothing to learn by reading), or
    when the file is an anomaly of its own (`SPARSE`: more than SPARSE_LIMIT of holes where no size
    was expected; `ABSURD_SIZE`: larger than its whole filesystem). `prefix` is hashed before the
    content: bytes in which `%d` stands for the size, or a callable given the size. `stopped()` is
    asked between blocks: True ends the read with OSError(EINTR). Raises NotRegularFile or OSError
    for what cannot be read.
    """
    fd = open_noatime(host)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(host, st.st_mode)
        drop_failed = False
        if drop_cache:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except (AttributeError, OSError):
                drop_failed = True
        size = st.st_size
        if expected_size is not None and size != expected_size:
            return None, st, 0, None, drop_failed
        empty = holes(fd, st)
        if empty:
            os.lseek(fd, 0, os.SEEK_SET)
        if empty and _larger_than_filesystem(fd, size):
            return None, st, empty, ABSURD_SIZE, drop_failed
        if empty > SPARSE_LIMIT and expected_size is None:
            return None, st, empty, SPARSE, drop_failed
        import hashlib  # here: an audit that hashes nothing does not load OpenSSL

        digest = hashlib.new(algorithm)
        if prefix is not None:
            if callable(prefix):
                digest.update(prefix(size))
            else:
                digest.update(prefix % size if b"%d" in prefix else prefix)
        view = memoryview(buffer)
        remaining = size
        announced = 0
        while remaining:
            if stopped():
                raise OSError(errno.EINTR, "stopped", host)
            if announced < size and remaining > len(view) and size - remaining + AHEAD // 2 >= announced:
                announced = _announce(fd, announced, size)
            count = os.readv(fd, [view[: min(remaining, len(view))]])
            if not count:
                break  # the file shrank while it was read: what was read is what it holds
            digest.update(view[:count])
            remaining -= count
        return digest.hexdigest(), st, empty, None, drop_failed
    finally:
        os.close(fd)


def _announce(fd: int, offset: int, size: int) -> int:
    """Ask the kernel to read AHEAD bytes from `offset` now (while the half before it is hashed);
    where it will have read up to (the whole file when the kernel refuses: nothing more to ask)."""
    end = min(size, offset + AHEAD)
    try:
        os.posix_fadvise(fd, offset, end - offset, os.POSIX_FADV_WILLNEED)
    except (AttributeError, OSError):
        return size
    return end


def _larger_than_filesystem(fd: int, size: int) -> bool:
    try:
        fs = os.fstatvfs(fd)
    except OSError:
        return False
    return fs.f_blocks > 0 and size > fs.f_blocks * fs.f_frsize


def list_directory(host: bytes, with_stat: bool) -> list:
    """[(name, type, lstat or OSError or None)] of the directory at `host`, which is opened with
    O_NOATIME so that listing it does not change its access time. `type` is S_IFDIR, S_IFREG,
    S_IFLNK or 0 (anything else), from the directory itself where the filesystem says (no lstat).
    With `with_stat`, every entry is lstat'ed here, through the open directory: on a cold disk the
    stats are the slow part, and they run wherever the listing runs (a reader thread)."""
    fd = open_noatime(host, DIRECTORY_FLAGS)
    try:
        listing = []
        with os.scandir(fd) as scan:
            for entry in scan:
                listing.append(
                    (os.fsencode(entry.name), _entry_type(entry), _lstat(entry) if with_stat else None)
                )
        return listing
    finally:
        os.close(fd)


_TYPES = (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK)


def _entry_type(entry: os.DirEntry) -> int:
    try:
        if entry.is_symlink():
            return stat.S_IFLNK
        if entry.is_dir(follow_symlinks=False):
            return stat.S_IFDIR
        if entry.is_file(follow_symlinks=False):
            return stat.S_IFREG
    except OSError:
        pass
    return 0


def _lstat(entry: os.DirEntry):
    try:
        return entry.stat(follow_symlinks=False)
    except OSError as error:
        return error


def scan_directory(host: bytes, start: float, end: float, full: bool) -> tuple:
    """(entries, records) of the directory at `host`, opened with O_NOATIME, every entry lstat'ed
    through the open directory. `records` are (name, type, stat fields or errno) of the entries a
    walk must look at: every subdirectory, every entry whose mtime or ctime lies in [start, end),
    every entry that could not be examined, or, with `full`, all of them; `entries` counts all."""
    fd = open_noatime(host, DIRECTORY_FLAGS)
    try:
        records = []
        entries = 0
        # The loop runs once per entry of the tree (300,000 in a small one): the type is masked
        # here rather than through stat.S_IFMT, a Python call.
        directory = stat.S_IFDIR
        with os.scandir(fd) as scan:
            for entry in scan:
                entries += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as error:
                    records.append((os.fsencode(entry.name), _entry_type(entry), error.errno or errno.EIO))
                    continue
                kind = st.st_mode & 0o170000
                if full or kind == directory or start <= st.st_mtime < end or start <= st.st_ctime < end:
                    records.append((os.fsencode(entry.name), kind if kind in _TYPES else 0, stat_fields(st)))
        return entries, records
    finally:
        os.close(fd)


# -- the worker process ------------------------------------------------------------------------------
#
# Messages both ways are frames: 4 bytes of little-endian length, then a marshal'ed tuple (the peer is
# our own process: nothing from the audited system is ever unmarshal'ed). To the worker:
#   ("hash", epoch, (root, drop_cache), [(seq, path, how, algorithm, expected_size, prefix,
#       a batch's expected digests or None), ...])
#       how: 0 = resolve `path` inside `root` without following its last component, 1 = following
#       it, 2 = `path` is already a host path, 3 = `path` is a list of host paths and the expected
#       digest a list of their digests (a batch: one job, one reply)
#   ("scan", epoch, (start, end), [(seq, host directory, full, position in the walk), ...]): the
#       position is a tuple of ints (fsaudit.scan's node key); a worker lists in that order
#   ("cancel", epoch)
# From the worker: ("ready", pid) once, then ("done", epoch, [reply, ...]) where a reply is
#   for "hash": (seq, 0, digest, stat fields, holes, anomaly, cache drop failed), (seq, -1, mode)
#       for a file that is not regular, (seq, -3, sizes, mtimes, replies, cache drop failures) for a
#       batch: the size and mtime of each file (-1 and 0.0 where it did not match), and a reply for
#       each file that did not, with the file's index in the batch as seq,
#   for "scan": (seq, 0, entries, records),
#   for both: (seq, errno, strerror) for an OSError, (seq, -2, text) for a bug.

STAT_FIELDS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
    "st_atime",
    "st_mtime",
    "st_ctime",
)
OK, NOT_REGULAR, BUG, BATCH = 0, -1, -2, -3
RESOLVE, FOLLOW, HOST, HOSTS = 0, 1, 2, 3


class DiskWaits:
    """Whether a worker's reader thread keeps waiting for the disk rather than computing: then another
    reader is worth starting. From the page cache little waits (now and then a thread another process
    preempted), and one reader per worker is fastest: the reader threads of one process contend for
    its interpreter lock (16 of them cost 15 % more CPU hashing a cached tree). From network storage
    a read waits a millisecond, and every reader the depth allows is needed.

    Only for worker processes, whose one busy thread is the reader: in the audit's own process the
    main thread computes too, and a lone reader thread would wait for the interpreter lock after
    every system call (the audit of 25,000 files took twice as long); there many readers are faster."""

    # A job that waited this long (seconds, not computing) may ask for another reader ...
    WAIT = 0.0003
    # ... when the thread's recent jobs (weights halving every 35 jobs) spent this share waiting,
    SHARE = 0.8
    # ... and the thread has done this many jobs (its very first ones may wait for start-up, not
    # the disk). Few: until then a cold worker reads one file at a time (with 32 here, the baseline
    # audit of 1,000 files on the 1 ms disk took 10 % longer, with 4 a few % longer than with 2;
    # from the page cache a worker keeps its one reader either way, as /proc shows).
    AFTER = 2

    def __init__(self):
        self.waited = self.taken = 0.0
        self.done = 0

    def begin(self) -> tuple:
        return time.monotonic(), time.thread_time()

    def waiting(self, began: tuple) -> bool:
        """After a job that started at `began` (from `begin()`): whether the jobs wait for the disk."""
        taken = time.monotonic() - began[0]
        waited = taken - (time.thread_time() - began[1])
        self.waited = self.waited * 0.98 + waited
        self.taken = self.taken * 0.98 + taken
        self.done += 1
        return self.done >= self.AFTER and waited > self.WAIT and self.waited > self.taken * self.SHARE


def stat_fields(st: os.stat_result) -> tuple:
    """The STAT_FIELDS of `st`, in that order (spelled out: made once per file read)."""
    return (
        st.st_mode,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_blksize,
        st.st_blocks,
        st.st_rdev,
        st.st_atime,
        st.st_mtime,
        st.st_ctime,
    )


class Stat(tuple):
    """A stat that crossed from a worker (`stat_fields()`), read as an os.stat_result is: by its
    `st_*` attributes (not by index). Making an os.stat_result took 1.2 µs, this 0.1 µs: a walk
    receives 30,000 of them and a package check one per file."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Stat(" + ", ".join(f"{name}={value!r}" for name, value in zip(STAT_FIELDS, self)) + ")"


for _index, _name in enumerate(STAT_FIELDS):
    setattr(Stat, _name, property(itemgetter(_index), doc=f"as os.stat_result.{_name}"))
del _index, _name


class Jobs:
    """Runs the jobs of the messages; one instance per reader thread (its own read buffer and
    resolvers). `run` never raises: every outcome is a reply tuple."""

    def __init__(self):
        self.buffer = b""
        self.resolvers: dict = {}

    def run(self, kind: str, header: tuple, job: tuple, stopped) -> tuple:
        try:
            if kind == "hash":
                return self.hash(job, *header, stopped)
            seq, host, full = job[0], job[1], job[2]
            return (seq, OK, *scan_directory(host, header[0], header[1], full))
        except Exception as error:
            return failure(job[0], error)

    def hash(self, job: tuple, root: bytes, drop_cache: bool, stopped) -> tuple:
        seq, path, how, algorithm, expected_size, prefix, digests = job
        if how == HOSTS:
            return self.batch(seq, path, algorithm, digests, drop_cache, stopped)
        if how == HOST:
            host = path
        else:
            resolver = self.resolvers.get(root)
            if resolver is None:
                resolver = self.resolvers[root] = Resolver(root)
            host = resolver.resolve(path, follow=how == FOLLOW)
        expected = None if expected_size < 0 else expected_size
        if not self.buffer:
            self.buffer = bytearray(BLOCK_SIZE)
        digest, st, empty, anomaly, drop_failed = hash_file(
            host, algorithm, expected, prefix, drop_cache, stopped, self.buffer
        )
        return (seq, OK, digest, stat_fields(st), empty, anomaly, drop_failed)

    def batch(self, seq: int, hosts: list, algorithm: str, digests: list, drop_cache: bool, stopped) -> tuple:
        """A batch of files at host paths, each expected to have its digest: (seq, BATCH, sizes,
        mtimes, the reply of each file that does not match with its index in place of a seq, cache
        drop failures). A file that matches is a size and an mtime; its reply is not made at all.
        The loop runs once per packaged file (25,000 in the benchmark's debian audit): it calls
        hash_file itself, without the steps of a job of its own."""
        if not self.buffer:
            self.buffer = bytearray(BLOCK_SIZE)
        buffer = self.buffer
        sizes, mtimes, others = [], [], []
        dropped = 0
        for index, host in enumerate(hosts):
            try:
                digest, st, empty, anomaly, drop_failed = hash_file(
                    host, algorithm, None, None, drop_cache, stopped, buffer
                )
            except Exception as error:
                reply = failure(index, error)
            else:
                if digest == digests[index] and not empty:
                    sizes.append(st.st_size)
                    mtimes.append(st.st_mtime)
                    dropped += drop_failed
                    continue
                reply = (index, OK, digest, stat_fields(st), empty, anomaly, drop_failed)
            sizes.append(-1)
            mtimes.append(0.0)
            others.append(reply)
        return (seq, BATCH, sizes, mtimes, others, dropped)


def failure(seq: int, error: Exception) -> tuple:
    """The reply for a job that raised `error`."""
    if isinstance(error, NotRegularFile):
        return (seq, NOT_REGULAR, error.mode)
    if isinstance(error, OSError):
        return (seq, error.errno or errno.EIO, error.strerror or str(error))
    # An unknown algorithm, a bug: the engine raises it in the caller.
    return (seq, BUG, f"{type(error).__name__}: {error}")


def write_frame(fd: int, message) -> None:
    payload = marshal.dumps(message)
    data = memoryview(len(payload).to_bytes(4, "little") + payload)
    while data:
        data = data[os.write(fd, data) :]


def read_frame(stream):
    """The next message from a binary stream, or None at its end."""
    header = stream.read(4)
    if len(header) < 4:
        return None
    size = int.from_bytes(header, "little")
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return marshal.loads(payload)


def _die_with_the_parent() -> None:
    """Ask the kernel to kill this worker when the process that started it dies (belt and braces:
    end-of-file on stdin ends it too, once its current read returns)."""
    try:
        import _signal
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(_signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def main() -> None:
    """A worker process: `threads` reader threads run the jobs that arrive on stdin, and the replies
    leave on stdout in batches. End-of-file on stdin (the engine is done, or its process died) ends
    the worker at once, whatever its threads are reading."""
    # The interpreter's own modules under threading, queue and signal: importing those took each
    # worker 6 ms of its start (functools, collections, enum), while the check waited for it.
    import _queue
    import _signal
    import _thread
    import heapq
    import itertools

    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    parent = os.getppid()
    _die_with_the_parent()
    if os.getppid() != parent:
        os._exit(0)
    threads = int(sys.argv[1])
    stdin = sys.stdin.buffer
    out = sys.stdout.fileno()
    # Jobs wait in a heap, the one the engine needs soonest first: hash jobs in the order they were
    # asked for, a walk's listings in the walk's order (its depth-first position). In arrival order a
    # directory's subdirectories, asked for once its listing came back, waited behind the listings
    # of its later siblings, and the walk waited for them. A token per entry wakes a reader; while
    # one reader is enough, a message's hash jobs wait as one entry (`hashes`).
    pending: list = []
    tokens = _queue.SimpleQueue()
    arrival = itertools.count()
    queued = _thread.allocate_lock()
    cancelled: set = set()
    replies: list = []
    lock = _thread.allocate_lock()
    flushing = [False]
    held = [0.0]

    def send(epoch, done: list, kind: str) -> None:
        # Replies leave together: when no job is left waiting (the engine is waiting for them), when
        # 32 have gathered, or, for a walk's listings, when one is done after the first of them has
        # waited HOLD seconds (the walk needs each listing in turn; hashing reads ahead of its
        # caller, and sending its replies early only costs CPU). The thread that finds nobody
        # writing writes what has gathered, its own reply and those that others add meanwhile; no
        # thread waits for another.
        now = time.monotonic()
        with lock:
            if not replies:
                held[0] = now
            replies.extend((epoch, reply) for reply in done)
            hold = kind != "scan" or now - held[0] < HOLD
            if flushing[0] or (len(replies) < 32 and pending and hold):
                return
            flushing[0] = True
        while True:
            with lock:
                batch = replies[:]
                del replies[:]
                if not batch:
                    flushing[0] = False
                    return
            by_epoch: dict = {}
            for epoch, reply in batch:
                by_epoch.setdefault(epoch, []).append(reply)
            for epoch, chunk in by_epoch.items():
                write_frame(out, ("done", epoch, chunk))

    running = [0]

    def start_reader() -> None:
        running[0] += 1
        _thread.start_new_thread(reader, ())

    def reader() -> None:
        jobs, waits = Jobs(), DiskWaits()
        while True:
            tokens.get()
            with queued:
                _, _, epoch, kind, header, job = heapq.heappop(pending)
            if epoch in cancelled:
                continue
            stopped = lambda epoch=epoch: epoch in cancelled  # noqa: E731
            if kind == "hashes":
                send(epoch, hash_window(jobs, waits, epoch, header, job, stopped), "hash")
                continue
            began = waits.begin()
            reply = jobs.run(kind, header, job, stopped)
            if waits.waiting(began):
                more_readers()
            send(epoch, [reply], kind)

    def more_readers() -> None:
        # While jobs wait for the disk and others queue, the readers double (up to `threads`, and no
        # more than the jobs queued): 16 after four more waits, not fifteen. Workers start with the
        # check, so no threads of the audit's process read the first files at full depth while they
        # ramp up (a cold baseline audit of 1,000 files: 0.85 s with one more reader at a time,
        # 0.78 s doubling). A warm run's rare slow read adds one.
        if running[0] < threads and pending:
            with lock:
                for _ in range(min(running[0], threads - running[0], len(pending))):
                    start_reader()

    def hash_window(jobs: Jobs, waits: DiskWaits, epoch, header, batch: list, stopped) -> list:
        # A message's hash jobs, run in turn by the one reader there is while nothing waits for the
        # disk (from the page cache): one heap entry, one wake-up and one reply frame for all of
        # them, not one each (the worker processes' CPU hashing a cached 1 GB tree: 2.27 -> 2.14 s).
        # Once a job waits, the rest go back to the heap one by one, for the readers that start.
        done = []
        for index, job in enumerate(batch):
            if epoch in cancelled:
                return done
            began = waits.begin()
            done.append(jobs.run("hash", header, job, stopped))
            if (waits.waiting(began) or running[0] > 1) and index + 1 < len(batch):
                queue_jobs(epoch, "hash", header, batch[index + 1 :])
                more_readers()
                break
        return done

    def queue_jobs(epoch, kind: str, header, batch: list) -> None:
        for job in batch:
            position = (epoch, *job[3]) if kind == "scan" else (epoch, job[0])
            with queued:
                heapq.heappush(pending, (position, next(arrival), epoch, kind, header, job))
            tokens.put(None)

    start_reader()
    write_frame(out, ("ready", os.getpid()))
    while True:
        message = read_frame(stdin)
        if message is None:
            os._exit(0)
        if message[0] == "cancel":
            cancelled.add(message[1])
            continue
        kind, epoch, header, batch = message
        if kind == "hash" and running[0] == 1 and batch:
            with queued:
                heapq.heappush(pending, ((epoch, batch[0][0]), next(arrival), epoch, "hashes", header, batch))
            tokens.put(None)
        else:
            queue_jobs(epoch, kind, header, batch)


if __name__ == "__main__":
    main()
