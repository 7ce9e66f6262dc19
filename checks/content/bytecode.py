"""Python bytecode (`.pyc`): it loads, and it is what the source beside it compiles to when its header
says it was compiled from that source as it is now."""

from __future__ import annotations

import importlib.util
import marshal
import os
import re
import sys
import types
from typing import Optional

from fsaudit_checks.content.job import PARSE_LIMIT, Cut, Job, Problem, Unsupported, read_parsable


def check_pyc(handle, job: Job) -> Optional[Problem]:
    """The bytecode loads; and when its header says it was compiled from the source beside it as it
    is now (same mtime and size, or same hash), it is what that source compiles to. A source
    changed by lost writes keeps its size and mtime, so Python keeps running the old bytecode and
    nothing else notices."""
    header = handle.read(16)
    if len(header) < 16:
        return Problem("structure-damaged", "the bytecode file is shorter than its header")
    if header[:4] != importlib.util.MAGIC_NUMBER:
        raise Unsupported("bytecode of another Python version")
    try:
        code = marshal.loads(read_parsable(handle))
    except MemoryError:
        # The worker's memory cap stopped an allocation far beyond what the file can hold.
        return Problem("structure-damaged", "the bytecode announces more data than the file holds")
    except (ValueError, EOFError, TypeError, SystemError) as error:
        # SystemError: CPython's code object constructor rejecting what marshal read.
        return Problem("structure-damaged", f"the bytecode cannot be loaded ({error})")
    if not isinstance(code, types.CodeType):
        return Problem("structure-damaged", f"the bytecode holds a {type(code).__name__}, not a code object")
    if job.source is None:
        return None
    return _against_source(header, code, job)


def _against_source(header: bytes, code: types.CodeType, job: Job) -> Optional[Problem]:
    flags = int.from_bytes(header[4:8], "little")
    source = job.source.read(PARSE_LIMIT + 1)
    if len(source) > PARSE_LIMIT:
        raise Cut("its source is too large to compile for comparison")
    if flags & 0b1:
        corresponds = importlib.util.source_hash(source) == header[8:16]
    else:
        st = job.source.st
        corresponds = (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF) == (
            int.from_bytes(header[8:12], "little"),
            int.from_bytes(header[12:16], "little"),
        )
    if not corresponds:
        # Python recompiles such a file on import: an ordinary edit, nothing to compare.
        return None
    source_name = os.fsdecode(job.source_path or b"")
    bytecode_name = os.fsdecode(job.path)
    try:
        compiled = compile(
            source, source_name, "exec", dont_inherit=True, optimize=optimization_level(job.path)
        )
    except (SyntaxError, ValueError) as error:
        return Problem(
            "bytecode-mismatch",
            f"no longer compiles ({str(error)[:200]}) although the bytecode {bytecode_name} records its"
            " size and modification time: the source changed silently",
            path=job.source_path,
        )
    if compiled != code:
        return Problem(
            "bytecode-mismatch",
            f"differs from what its bytecode {bytecode_name} was compiled from, although the bytecode"
            " records its size and modification time: the source (or the bytecode) changed silently",
            path=job.source_path,
        )
    return None


def optimization_level(pyc_path: bytes) -> int:
    """0, 1 or 2 from a PEP 488 name (`mod.cpython-311.opt-1.pyc`)."""
    match = re.search(rb"\.opt-([12])\.pyc$", pyc_path)
    return int(match.group(1)) if match else 0


def source_of(pyc_path: bytes) -> Optional[bytes]:
    """The source a `.pyc` was compiled from: `pkg/mod.py` for `pkg/__pycache__/mod.TAG[.opt-N].pyc`
    (PEP 3147) of this Python, `mod.py` beside a legacy `mod.pyc`; None for other names."""
    directory, _, name = pyc_path.rpartition(b"/")
    if not name.endswith(b".pyc"):
        return None
    if directory.endswith(b"/__pycache__") or directory == b"__pycache__":
        parts = name.split(b".")
        tag = (sys.implementation.cache_tag or "").encode()
        if len(parts) < 3 or parts[1] != tag or not parts[0]:
            return None
        return directory[: -len(b"__pycache__")] + parts[0] + b".py"
    return pyc_path[:-1]
