"""File format validators for the `content` checker, registered in one table.

Each validator reads an open regular file and returns None when the file is sound, or a Problem; it
raises Unsupported when the format cannot be checked here and Cut when a bound stopped it. They run
in a worker process with a memory cap (worker.py), never in the audit process: a damaged length can
make a parser allocate gigabytes, and a C parser can crash. Every read is bounded; decompressed data
is streamed, counted against the file's size (`Limits`) and thrown away. Nothing is imported or
executed from the file.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import importlib.util
import json
import lzma
import marshal
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import types
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple
from xml.parsers import expat

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHUNK = 1 << 20
PARSE_LIMIT = 64 << 20
ZERO_BLOCK = 4096


@dataclass
class Problem:
    """What is wrong with a file: a finding code of the `content` checker and words for it."""

    code: str  # checksum-mismatch, structure-damaged, zero-blocks, parse-error, bytecode-mismatch
    message: str
    path: Optional[bytes] = None  # the file the finding is about, when not the one checked


class Unsupported(Exception):
    """The format is known but cannot be checked on this machine (a module or program is missing)."""


class Cut(Exception):
    """A bound stopped the check before the file's end: what was read is sound, the rest unknown."""


@dataclass(frozen=True)
class Limits:
    """How far a check may go: decompressed bytes at most `max_ratio` times the compressed size
    (never less than `floor`, never more than `max_decompressed`)."""

    max_ratio: int = 1000
    max_decompressed: int = 16 << 30
    floor: int = 64 << 20

    def decompressed_cap(self, compressed: int) -> int:
        return min(self.max_decompressed, max(self.floor, compressed * self.max_ratio))


@dataclass
class Job:
    """One file to check: its path (for messages), the bounds, and for a `.pyc` its source."""

    path: bytes
    limits: Limits = Limits()
    source: Optional[object] = None  # an open file
    source_path: Optional[bytes] = None


def _drain(stream, job: Job, compressed: int, total: Optional[list] = None) -> None:
    """Read a decompressing stream to its end, stopping at the job's cap (Cut)."""
    cap = job.limits.decompressed_cap(compressed)
    total = total if total is not None else [0]
    while True:
        block = stream.read(CHUNK)
        if not block:
            return
        total[0] += len(block)
        if total[0] > cap:
            raise Cut(
                f"decompressed data passed {_size(cap)} ({job.limits.max_ratio}:1 of its {_size(compressed)})"
                " and was not read further: a decompression bomb, or data too compressible to check in full"
            )


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):,.1f} {unit}"
    return f"{count:,} bytes"


def _compressed(opener: Callable) -> Callable:
    def check(handle, job: Job) -> Optional[Problem]:
        try:
            with opener(handle) as stream:
                _drain(stream, job, handle.st.st_size)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as error:
            text = str(error)
            code = "checksum-mismatch" if re.search(r"crc|checksum", text, re.I) else "structure-damaged"
            return Problem(code, f"the compressed stream is damaged: {text or type(error).__name__}")
        return None

    return check


def check_zstd(handle, job: Job) -> Optional[Problem]:
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        try:
            with zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True) as stream:
                _drain(stream, job, handle.st.st_size)
        except zstandard.ZstdError as error:
            return Problem("structure-damaged", f"the zstd stream is damaged: {error}")
        return None
    if shutil.which("zstd") is None:
        raise Unsupported("zstd needs the zstandard Python module or the zstd program")
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["zstd", "-dc", "-q", "-"],
            stdin=handle,
            stdout=subprocess.PIPE,
            stderr=errors,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
        try:
            _drain(process.stdout, job, handle.st.st_size)
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
            process.wait()
        if process.returncode != 0:
            errors.seek(0)
            message = errors.read(300).decode(errors="replace").strip()
            return Problem("checksum-mismatch", f"zstd: {message or f'exit status {process.returncode}'}")
    return None


def check_zip(handle, job: Job) -> Optional[Problem]:
    total = [0]
    try:
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    # Members may overlap (a zip bomb): the cap is over the whole archive.
                    _drain(member, job, handle.st.st_size, total)
    except zipfile.BadZipFile as error:
        code = "checksum-mismatch" if "CRC" in str(error) else "structure-damaged"
        return Problem(code, f"the archive is damaged: {error}")
    except (OSError, EOFError, zlib.error, NotImplementedError, ValueError, lzma.LZMAError) as error:
        if isinstance(error, NotImplementedError):
            raise Unsupported(f"zip member uses an unsupported method: {error}") from None
        return Problem("structure-damaged", f"the archive is damaged: {error}")
    return None


def check_tar(handle, job: Job) -> Optional[Problem]:
    try:
        with tarfile.open(fileobj=handle, mode="r:") as archive:
            for member in archive:
                stream = archive.extractfile(member) if member.isfile() else None
                if stream is not None:
                    _drain(stream, job, handle.st.st_size)
            end = archive.offset
    except (tarfile.TarError, OSError, EOFError, ValueError, OverflowError, MemoryError) as error:
        return Problem("structure-damaged", f"the tar archive is damaged: {error}")
    # tarfile stops quietly at a damaged header after the first: what follows must be padding.
    handle.seek(end)
    while True:
        block = handle.read(CHUNK)
        if not block:
            return None
        if block.strip(b"\0"):
            return Problem(
                "structure-damaged", f"a damaged tar header near offset {end}: the rest is unreadable"
            )


def check_png(handle, job: Job) -> Optional[Problem]:
    if handle.read(8) != b"\x89PNG\r\n\x1a\n":
        return Problem("structure-damaged", "the PNG signature is damaged")
    chunks = 0
    while True:
        head = handle.read(8)
        if len(head) < 8:
            return Problem(
                "structure-damaged", f"the image ends after {chunks} chunks without its IEND chunk"
            )
        length, kind = struct.unpack(">I4s", head)
        if length > 1 << 31:
            return Problem("structure-damaged", f"chunk {chunks} claims {length} bytes")
        crc = zlib.crc32(kind)
        remaining = length
        while remaining:
            block = handle.read(min(remaining, CHUNK))
            if not block:
                return Problem("structure-damaged", f"chunk {kind!r} is cut short")
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
        stored = handle.read(4)
        if len(stored) < 4 or struct.unpack(">I", stored)[0] != crc:
            return Problem(
                "checksum-mismatch", f"the CRC of chunk {chunks} ({kind.decode('latin-1')}) is wrong"
            )
        chunks += 1
        if kind == b"IEND":
            return None


def check_elf(handle, job: Job) -> Optional[Problem]:
    size = handle.st.st_size
    ident = handle.read(64)
    if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return Problem("structure-damaged", "the ELF header is damaged")
    wide = ident[4] == 2
    order = "<" if ident[5] == 1 else ">"
    if wide:
        phoff, shoff = struct.unpack_from(order + "QQ", ident, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(order + "HHHHH", ident, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", ident, 28)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(order + "HHHHH", ident, 42)
    if phnum and phoff + phentsize * phnum > size:
        return Problem("structure-damaged", "the ELF program header table lies past the end of the file")
    if not shnum:
        return None
    if shoff + shentsize * shnum > size or shentsize < (64 if wide else 40) or shstrndx >= shnum:
        return Problem("structure-damaged", "the ELF section header table is out of bounds")
    handle.seek(shoff)
    table = handle.read(shentsize * min(shnum, 65536))
    for index in range(min(shnum, 65536)):
        entry = table[index * shentsize : (index + 1) * shentsize]
        if wide:
            kind, offset, length = struct.unpack_from(order + "4xI16xQQ", entry)
        else:
            kind, offset, length = struct.unpack_from(order + "4xI8xII", entry)
        if kind not in (0, 8) and offset + length > size:  # SHT_NULL and SHT_NOBITS take no space
            return Problem("structure-damaged", f"ELF section {index} lies past the end of the file")
    return None


def _text(handle) -> bytes:
    data = handle.read(PARSE_LIMIT + 1)
    if len(data) > PARSE_LIMIT:
        raise Unsupported("too large to parse")
    return data


def zero_blocks(data: bytes) -> Optional[Problem]:
    """NUL runs in a text file, or 4 KiB-aligned zero blocks: the trace of a lost extent update."""
    blocks = sum(
        1
        for offset in range(0, len(data) - ZERO_BLOCK + 1, ZERO_BLOCK)
        if not data[offset : offset + ZERO_BLOCK].strip(b"\0")
    )
    if blocks:
        return Problem("zero-blocks", f"{blocks} zero-filled 4 KiB block(s) in a text file")
    if b"\0" * 16 in data:
        return Problem("zero-blocks", "a run of NUL bytes in a text file")
    return None


def _parsed(parse: Callable[[bytes], object], what: str) -> Callable:
    def check(handle, job: Job) -> Optional[Problem]:
        data = _text(handle)
        problem = zero_blocks(data)
        if problem:
            return problem
        try:
            parse(data)
        except (Unsupported, MemoryError):
            raise
        except Exception as error:  # each parser has its own error family
            return Problem("parse-error", f"does not parse as {what}: {str(error)[:300]}")
        return None

    return check


def _parse_xml(data: bytes) -> None:
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.Parse(data, True)


def _parse_yaml(data: bytes) -> None:
    try:
        import yaml
    except ImportError:
        raise Unsupported("YAML needs the PyYAML module") from None
    for _ in yaml.safe_load_all(data):
        pass


def _parse_python(data: bytes) -> None:
    ast.parse(data)


def check_text(handle, job: Job) -> Optional[Problem]:
    return zero_blocks(_text(handle))


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
        code = marshal.loads(_text(handle))
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


def check_sqlite(handle, job: Job) -> Optional[Problem]:
    """PRAGMA integrity_check on a private copy: never a -wal or -shm beside the original."""
    with tempfile.TemporaryDirectory(prefix="fsaudit-sqlite-") as scratch:
        copy = os.path.join(scratch, "db.sqlite")
        with open(copy, "wb") as out:
            shutil.copyfileobj(handle, out, CHUNK)
        connection = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            rows = [row[0] for row in connection.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as error:
            return Problem("structure-damaged", f"SQLite cannot read the database: {error}")
        finally:
            connection.close()
    if rows != ["ok"]:
        return Problem("structure-damaged", "SQLite integrity_check: " + "; ".join(rows)[:500])
    return None


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: Tuple[str, ...]
    magic: bytes
    check: Callable  # (open file, Job) -> Optional[Problem]
    advice: str


RESTORE = "restore this file from backup, or download or build it again"
REDEPLOY = "restore this file from backup or re-deploy the application it belongs to"

# The one table: a format is recognised by its magic bytes first, then by its name.
FORMATS = (
    Format("gzip", (".gz", ".tgz"), b"\x1f\x8b", _compressed(lambda h: gzip.GzipFile(fileobj=h)), RESTORE),
    Format("bzip2", (".bz2", ".tbz2"), b"BZh", _compressed(bz2.BZ2File), RESTORE),
    Format("xz", (".xz", ".txz", ".lzma"), b"\xfd7zXZ\x00", _compressed(lzma.LZMAFile), RESTORE),
    Format("zstd", (".zst",), b"\x28\xb5\x2f\xfd", check_zstd, RESTORE),
    Format(
        "zip",
        (".zip", ".jar", ".war", ".whl", ".egg", ".apk", ".docx", ".xlsx", ".odt"),
        b"PK\x03\x04",
        check_zip,
        RESTORE,
    ),
    Format("png", (".png",), b"\x89PNG", check_png, RESTORE),
    Format("elf", (), b"\x7fELF", check_elf, "reinstall the program or library this file belongs to"),
    Format(
        "sqlite",
        (".sqlite", ".sqlite3"),
        b"SQLite format 3\x00",
        check_sqlite,
        "restore the database from backup (sqlite3's .recover can salvage what is readable)",
    ),
    Format(
        "pyc",
        (".pyc",),
        b"",
        check_pyc,
        "delete this cached bytecode file; Python rebuilds it from the source",
    ),
    Format("tar", (".tar",), b"", check_tar, RESTORE),
    Format("json", (".json",), b"", _parsed(json.loads, "JSON"), REDEPLOY),
    Format(
        "xml",
        (".xml", ".svg", ".xsd", ".xsl", ".zcml", ".pt", ".rdf"),
        b"",
        _parsed(_parse_xml, "XML"),
        REDEPLOY,
    ),
    Format("toml", (".toml",), b"", _parsed(lambda d: tomllib.loads(d.decode("utf-8")), "TOML"), REDEPLOY),
    Format("yaml", (".yaml", ".yml"), b"", _parsed(_parse_yaml, "YAML"), REDEPLOY),
    Format("python", (".py",), b"", _parsed(_parse_python, "Python"), REDEPLOY),
    Format(
        "text",
        (
            ".txt",
            ".md",
            ".rst",
            ".csv",
            ".ini",
            ".cfg",
            ".conf",
            ".html",
            ".htm",
            ".css",
            ".js",
            ".sh",
            ".php",
            ".rb",
            ".pl",
            ".sql",
        ),
        b"",
        check_text,
        REDEPLOY,
    ),
)
MAGIC_BYTES = 16


def recognise(path: bytes, head: bytes) -> Tuple[Optional[Format], bool]:
    """The format of a file from its first bytes, else from its name, and whether its magic bytes
    are as the format requires (False: the name says gzip but the file does not start like one)."""
    for fmt in FORMATS:
        if fmt.magic and head.startswith(fmt.magic):
            return fmt, True
    name = os.fsdecode(path).lower()
    for fmt in FORMATS:
        if fmt.suffixes and name.endswith(fmt.suffixes):
            return fmt, not fmt.magic
    return None, True
