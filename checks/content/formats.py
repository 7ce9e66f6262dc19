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
import json
import lzma
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple
from xml.parsers import expat

from fsaudit_checks.content.bytecode import check_pyc
from fsaudit_checks.content.job import CHUNK, Cut, Job, Limits, Problem, Unsupported, drain, read_parsable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The helpers' vocabulary is used through this module by the checker and its worker.
__all__ = ["FORMATS", "Cut", "Format", "Job", "Limits", "Problem", "Unsupported", "recognise", "zero_blocks"]

ZERO_BLOCK = 4096


def _compressed(opener: Callable) -> Callable:
    def check(handle, job: Job) -> Optional[Problem]:
        try:
            with opener(handle) as stream:
                drain(stream, job, handle.st.st_size)
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
                drain(stream, job, handle.st.st_size)
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
            drain(process.stdout, job, handle.st.st_size)
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
                    drain(member, job, handle.st.st_size, total)
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
                    drain(stream, job, handle.st.st_size)
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
        data = read_parsable(handle)
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
    return zero_blocks(read_parsable(handle))


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
