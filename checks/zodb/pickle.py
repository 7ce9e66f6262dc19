"""Reading ZODB pickles and Data.fs.index without importing any class from the audited system.

A ZODB record is two pickles: the class metadata, then the state. Persistent references in the state
come in these forms (ZODB/serialize.py):

    oid                         plain reference
    (oid, class metadata)       reference with the class
    ['w', (oid[, database])]    weak reference          [oid]   legacy weak reference
    ['n', (database, oid)]      cross-database reference
    ['m', (database, oid, class)] cross-database reference with the class

The unpickler below hands every global to a placeholder class built on the spot, so no module is
imported and no code from the audited system runs; it only records the references it meets.
"""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
import resource
import struct
from typing import Iterator, List, Tuple


class _Placeholder:
    """Stands in for any class a pickle names; accepts whatever the pickle does to it."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


@functools.lru_cache(maxsize=4096)
def _placeholder(module: str, name: str) -> type:
    return type(str(name)[:200] or "_", (_Placeholder,), {"__module__": str(module)[:200]})


class UnreadablePickle(ValueError):
    """A record whose pickle cannot be parsed: ZODB cannot load the object."""


class _RecordUnpickler(pickle.Unpickler):
    """The C unpickler; `find_class` and `persistent_load` are set per instance to C-level callables
    (a cached function, a list's append), which keeps Python frames out of the hot path."""


def class_name(meta) -> str:
    """module.Name from a record's class metadata (every form ZODB ever wrote)."""
    if isinstance(meta, tuple) and meta:
        meta = meta[0]
    if isinstance(meta, type) and issubclass(meta, _Placeholder):
        return f"{meta.__module__}.{meta.__name__}"
    if isinstance(meta, tuple) and len(meta) == 2 and all(isinstance(part, (str, bytes)) for part in meta):
        return ".".join(part.decode("latin-1") if isinstance(part, bytes) else part for part in meta)
    return "?"


class RecordParser:
    """Parses records one after the other, reusing one unpickler for a few of them (building an
    unpickler costs as much as parsing a small record). The unpickler is rebuilt after any error,
    since the C unpickler may keep unread input then, and every REUSE records, which bounds the
    cost of a memo that a strange but parseable pickle made large."""

    REUSE = 64

    def __init__(self):
        self._file = io.BytesIO()
        self._pids: list = []
        self._unpickler = None
        self._uses = 0

    def _fresh(self):
        self._file = io.BytesIO()
        unpickler = _RecordUnpickler(self._file, encoding="bytes")
        unpickler.find_class = _placeholder
        unpickler.persistent_load = self._pids.append
        self._uses = 0
        return unpickler

    def references(self, data: bytes) -> Tuple[object, List[bytes], int]:
        """(class metadata, oids it references strongly, number of cross-database references) of
        a record; `class_name(metadata)` names the class.

        Raises UnreadablePickle when either pickle cannot be parsed.
        """
        unpickler = self._unpickler
        if unpickler is None or self._uses >= self.REUSE:
            unpickler = self._unpickler = self._fresh()
        else:
            unpickler.memo.clear()
        self._uses += 1
        source = self._file
        source.seek(0)
        source.write(data)
        source.truncate()
        source.seek(0)
        pids = self._pids
        pids.clear()
        try:
            meta = unpickler.load()
            unpickler.load()
        except RecursionError as error:
            self._unpickler = None
            raise UnreadablePickle("the pickle nests too deeply") from error
        except MemoryError:
            self._unpickler = None
            raise UnreadablePickle("the pickle announces sizes far beyond its own length") from None
        except Exception as error:  # noqa: BLE001 - any failure to parse untrusted bytes is damage
            self._unpickler = None
            raise UnreadablePickle(f"{type(error).__name__}: {error}"[:300]) from None
        strong = []
        foreign = 0
        for pid in pids:
            kind = type(pid)
            if kind is bytes:
                oid = pid
            elif kind is tuple and len(pid) == 2 and type(pid[0]) is bytes:
                oid = pid[0]
            elif kind is list and pid and pid[0] in ("m", "n", b"m", b"n"):
                foreign += 1
                continue
            elif (
                kind is list and pid and (pid[0] in ("w", b"w") or (len(pid) == 1 and type(pid[0]) is bytes))
            ):
                continue  # weak references may dangle by design
            else:
                raise UnreadablePickle(f"unknown persistent reference {pid!r}"[:300])
            if len(oid) != 8:
                raise UnreadablePickle("a persistent reference holds an oid that is not 8 bytes long")
            strong.append(oid)
        return meta, strong, foreign


def record_references(data: bytes) -> Tuple[object, List[bytes], int]:
    """`RecordParser.references` of one record."""
    return RecordParser().references(data)


def check_extension(data: bytes) -> None:
    """Raise UnreadablePickle unless a transaction's extension metadata unpickles."""
    unpickler = _RecordUnpickler(io.BytesIO(data), encoding="bytes")
    unpickler.find_class = _placeholder
    unpickler.persistent_load = [].append
    try:
        unpickler.load()
    except RecursionError as error:
        raise UnreadablePickle("the pickle nests too deeply") from error
    except Exception as error:  # noqa: BLE001 - any failure to parse untrusted bytes is damage
        raise UnreadablePickle(f"{type(error).__name__}: {error}"[:300]) from None


@contextlib.contextmanager
def memory_ceiling(extra: int) -> Iterator[None]:
    """Cap this process's data segment at its current size + `extra` bytes for the duration.

    The C unpickler trusts the lengths inside a pickle: a damaged LONG_BINPUT index makes it
    allocate and zero a memo of up to 64 GiB, and BINBYTES allocates the announced length before
    reading. Under the cap those allocations fail with MemoryError (a damaged pickle) instead of
    pushing the audited machine into swap or the OOM killer (vm.overcommit_memory=1 grants them).
    """
    try:
        with open("/proc/self/statm") as statm:
            data_pages = int(statm.read().split()[5])
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    except (OSError, ValueError, IndexError, AttributeError):
        yield
        return
    ceiling = data_pages * resource.getpagesize() + extra
    if soft != resource.RLIM_INFINITY and soft <= ceiling:
        yield
        return
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    except (OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# -- Data.fs.index ---------------------------------------------------------------------------------


class IndexUnreadable(ValueError):
    """Data.fs.index cannot be read (damaged, or a format this reader does not know)."""


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise IndexUnreadable(f"the index names the class {module}.{name}: an old index format")


def read_index(handle) -> Tuple[int, Iterator[Tuple[int, Tuple[int, ...], Tuple[int, ...]]]]:
    """(file position the index covers, iterator of buckets) of a Data.fs.index. A bucket is
    (oid high bits, low 16 bits of each oid, (high 16, low 32 bits) of each record position).

    The format (ZODB.fsIndex.save): a pickled int, then pickled (6-byte oid prefix, bucket string)
    pairs, then None; a bucket string is its 2-byte key suffixes followed by its 6-byte positions.
    """
    unpickler = _IndexUnpickler(handle)
    try:
        pos = unpickler.load()
    except IndexUnreadable:
        raise
    except Exception as error:  # noqa: BLE001
        raise IndexUnreadable(f"{type(error).__name__}: {error}"[:300]) from None
    if type(pos) is not int or pos < 0:
        raise IndexUnreadable("the index does not start with a file position")
    return pos, _index_buckets(unpickler)


def _index_buckets(unpickler) -> Iterator[Tuple[int, Tuple[int, ...], Tuple[int, ...]]]:
    while True:
        try:
            item = unpickler.load()
        except IndexUnreadable:
            raise
        except Exception as error:  # noqa: BLE001
            raise IndexUnreadable(f"{type(error).__name__}: {error}"[:300]) from None
        if item is None:
            return
        if not (type(item) is tuple and len(item) == 2 and type(item[0]) is bytes and type(item[1]) is bytes):
            raise IndexUnreadable("an index entry is not a (prefix, bucket) pair")
        prefix, bucket = item
        if len(prefix) != 6 or len(bucket) % 8:
            raise IndexUnreadable("an index bucket has the wrong size")
        count = len(bucket) // 8
        keys = struct.unpack(f">{count}H", bucket[: 2 * count])
        positions = struct.unpack(">" + "HI" * count, bucket[2 * count :])
        yield int.from_bytes(prefix, "big") << 16, keys, positions
