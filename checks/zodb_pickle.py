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

import io
import pickle
import struct
from typing import Iterator, List, Tuple

_PLACEHOLDER_CACHE_LIMIT = 4096


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


class _Reference:
    __slots__ = ()


_REFERENCE = _Reference()
_PLACEHOLDERS: dict = {}


def _placeholder(module: str, name: str) -> type:
    key = (module, name)
    cls = _PLACEHOLDERS.get(key)
    if cls is None:
        cls = type(str(name)[:200] or "_", (_Placeholder,), {"__module__": str(module)[:200]})
        if len(_PLACEHOLDERS) < _PLACEHOLDER_CACHE_LIMIT:
            _PLACEHOLDERS[key] = cls
    return cls


class UnreadablePickle(ValueError):
    """A record whose pickle cannot be parsed: ZODB cannot load the object."""


class _RecordUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.strong: List[bytes] = []
        self.foreign = 0

    def find_class(self, module, name):
        return _placeholder(module, name)

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 2 and isinstance(pid[0], bytes):
            self.strong.append(pid[0])
        elif isinstance(pid, bytes):
            self.strong.append(pid)
        elif isinstance(pid, list) and pid:
            kind = pid[0]
            if kind in ("m", "n", b"m", b"n"):
                self.foreign += 1
            elif kind not in ("w", b"w") and not (len(pid) == 1 and isinstance(kind, bytes)):
                raise UnreadablePickle(f"unknown persistent reference {pid[:1]!r}")
        else:
            raise UnreadablePickle(f"unknown persistent reference of type {type(pid).__name__}")
        return _REFERENCE


def _class_name(meta) -> str:
    """module.Name from a record's class metadata (every form ZODB ever wrote)."""
    if isinstance(meta, tuple) and meta:
        meta = meta[0]
    if isinstance(meta, type) and issubclass(meta, _Placeholder):
        return f"{meta.__module__}.{meta.__name__}"
    if isinstance(meta, tuple) and len(meta) == 2 and all(isinstance(part, (str, bytes)) for part in meta):
        return ".".join(part.decode("latin-1") if isinstance(part, bytes) else part for part in meta)
    return "?"


def record_references(data: bytes) -> Tuple[str, List[bytes], int]:
    """(class name, oids it references strongly, number of cross-database references) of a record.

    Raises UnreadablePickle when either pickle cannot be parsed.
    """
    unpickler = _RecordUnpickler(data)
    try:
        meta = unpickler.load()
        unpickler.load()
    except UnreadablePickle:
        raise
    except RecursionError as error:
        raise UnreadablePickle("the pickle nests too deeply") from error
    except Exception as error:  # noqa: BLE001 - any failure to parse untrusted bytes is damage
        raise UnreadablePickle(f"{type(error).__name__}: {error}"[:300]) from None
    strong = [oid for oid in unpickler.strong if len(oid) == 8]
    if len(strong) != len(unpickler.strong):
        raise UnreadablePickle("a persistent reference holds an oid that is not 8 bytes long")
    return _class_name(meta), strong, unpickler.foreign


# -- Data.fs.index ---------------------------------------------------------------------------------


class IndexUnreadable(ValueError):
    """Data.fs.index cannot be read (damaged, or a format this reader does not know)."""


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise IndexUnreadable(f"the index names the class {module}.{name}: an old index format")


def read_index(handle) -> Tuple[int, Iterator[Tuple[int, int]]]:
    """(file position the index covers, iterator of (oid, record position)) of a Data.fs.index.

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
    if not isinstance(pos, int) or pos < 0:
        raise IndexUnreadable("the index does not start with a file position")
    return pos, _index_entries(unpickler)


def _index_entries(unpickler) -> Iterator[Tuple[int, int]]:
    while True:
        try:
            item = unpickler.load()
        except Exception as error:  # noqa: BLE001
            raise IndexUnreadable(f"{type(error).__name__}: {error}"[:300]) from None
        if item is None:
            return
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)):
            raise IndexUnreadable("an index entry is not a (prefix, bucket) pair")
        prefix, bucket = item
        if len(prefix) != 6 or not isinstance(bucket, bytes) or len(bucket) % 8:
            raise IndexUnreadable("an index bucket has the wrong size")
        count = len(bucket) // 8
        high = int.from_bytes(prefix, "big") << 16
        for index in range(count):
            key = bucket[2 * index : 2 * index + 2]
            value = bucket[2 * count + 6 * index : 2 * count + 6 * index + 6]
            yield high | int.from_bytes(key, "big"), int.from_bytes(value, "big")


def pack_oid(oid: int) -> bytes:
    return struct.pack(">Q", oid)


def maybe_oid(value) -> bytes | None:
    return value if isinstance(value, bytes) and len(value) == 8 else None
