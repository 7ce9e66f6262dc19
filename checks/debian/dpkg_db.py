"""Reading the dpkg database of an audited root without the dpkg binary.

Everything here reads through the Target and trusts nothing: each malformed line is recorded as a
`Damage` (file, line number, what is wrong) and the rest of the file is still used, so the checker
can report the damage and verify everything else.

The status file is parsed here rather than with python-debian's deb822: deb822 silently folds a
garbage line into the previous field or drops it, and a damaged status file is exactly what this
checker must notice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Set, Tuple

from fsaudit.target import Target

DPKG_DIR = b"/var/lib/dpkg"
STATUS = DPKG_DIR + b"/status"
UPDATES = DPKG_DIR + b"/updates"
INFO = DPKG_DIR + b"/info"
DIVERSIONS = DPKG_DIR + b"/diversions"
CONFIG_DIR = b"/etc/dpkg/dpkg.cfg.d"
CONFIG_FILE = b"/etc/dpkg/dpkg.cfg"

# Bounds for files that a damaged disk (or a hostile tenant) may have turned into something huge.
# Files are read line by line, never whole; what a bound leaves out is reported as Damage.
MAX_STATUS = 256 << 20
MAX_LIST = 128 << 20
MAX_CONFIG = 1 << 20
MAX_JOURNAL_ENTRIES = 100_000
# The largest Debian packages ship tens of thousands of files and the whole archive holds about
# 130,000 binary packages: more is damage, and reading it all would only cost memory (each path
# costs the checker a few KiB on its way to a finding).
MAX_PATHS = 200_000
MAX_PACKAGES = 500_000
CHUNK = 1 << 20
MAX_LINE = 1 << 20
MAX_PARAGRAPH_LINES = 10_000
MAX_PARAGRAPH_BYTES = 16 << 20
MAX_DAMAGE = 1000

# States in which dpkg has unpacked the package's files (dpkg(1) "Package states").
UNPACKED_STATES = {
    "installed",
    "triggers-awaited",
    "triggers-pending",
    "half-configured",
    "unpacked",
    "half-installed",
}
SETTLED_STATES = {"installed", "triggers-awaited", "triggers-pending"}

_FIELD = re.compile(rb"^([!-9;-~][!-9;-~]*):(.*)$")
_MD5 = re.compile(rb"^[0-9a-fA-F]{32}$")
_DIGITS = re.compile(rb"^[0-9]+$")
_MD5_LINE = re.compile(rb"^([0-9a-fA-F]{32})(?:  | \*)([^\n\0]+)$", re.M)
_LIST_LINE = re.compile(rb"^/[^\n\0]*$", re.M)
# One or more blank (empty or whitespace) lines between two lines: what separates paragraphs.
_MARK = bytes(10 if byte == 10 else ord("x") for byte in range(256))
_SEPARATOR = re.compile(rb"\n[ \t\r\v\f\n]*\n")


@dataclass
class Damage:
    """A malformed part of a dpkg database file; the rest of the file was still used."""

    path: bytes
    problem: str
    line: int | None = None
    count: int = 1


@dataclass
class Conffile:
    path: bytes
    md5: str
    obsolete: bool = False


@dataclass
class Package:
    """One package entry of the status database."""

    name: str
    version: str = ""
    architecture: str = ""
    status: str = ""
    multi_arch: str = ""
    conffiles: List[Conffile] = field(default_factory=list)

    @property
    def state(self) -> str:
        parts = self.status.split()
        return parts[2] if len(parts) == 3 else ""

    @property
    def key(self) -> Tuple[str, str]:
        return (self.name, self.architecture)

    @property
    def subject(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def qualified(self) -> str:
        """The name apt and dpkg accept for this package (arch-qualified for Multi-Arch: same)."""
        if self.multi_arch == "same" and self.architecture:
            return f"{self.name}:{self.architecture}"
        return self.name

    def details(self) -> dict:
        return {"package": self.name, "version": self.version, "architecture": self.architecture}

    def info_names(self) -> Tuple[str, ...]:
        """Base names of the package's files in info/, most specific first."""
        if self.architecture:
            return (f"{self.name}:{self.architecture}", self.name)
        return (self.name,)


# -- reading files line by line -----------------------------------------------------------------


class Lines:
    """The lines of a file of the target, read in blocks of complete lines.

    `blocks()` yields (number of the block's first line, the block's lines joined by newlines,
    without the last newline); iterating yields (line number, line). Memory stays bounded by the
    block size and the longest line (a line longer than MAX_LINE is cut and counted). After reading,
    `unterminated` says whether the last line lacked its newline (it comes last, alone in its
    block) and `oversize` whether the file went on past `limit` bytes (the rest was not read).
    """

    def __init__(self, target: Target, path: bytes, limit: int):
        self.path = path
        self.limit = limit
        self.unterminated = False
        self.oversize = False
        self.long_lines = 0
        self.handle = target.open(path)

    def blocks(self) -> Iterator[Tuple[int, bytes]]:
        number = 1
        carry = b""
        read = 0
        cut = False
        with self.handle:
            while not self.oversize:
                block = self.handle.read(min(CHUNK, self.limit - read + 1))
                if not block:
                    break
                read += len(block)
                if read > self.limit:
                    block = block[: len(block) - (read - self.limit)]
                    self.oversize = True
                data = carry + block
                end = data.rfind(b"\n")
                if end < 0:
                    carry = data
                else:
                    complete, carry = data[:end], data[end + 1 :]
                    cut = False
                    yield number, complete
                    number += complete.count(b"\n") + 1
                if len(carry) > MAX_LINE:
                    # One overlong line is counted once, however many blocks it spans.
                    self.long_lines += not cut
                    cut = True
                    carry = carry[:MAX_LINE]
        if carry:
            self.unterminated = True
            yield number, carry

    def __iter__(self) -> Iterator[Tuple[int, bytes]]:
        for first, block in self.blocks():
            yield from enumerate(block.split(b"\n"), first)

    def damage(self) -> List[Damage]:
        """What reading the file found wrong with it as a whole."""
        found = []
        if self.oversize:
            found.append(
                Damage(self.path, f"the file is larger than {self.limit:,} bytes: the rest was not read")
            )
        if self.long_lines:
            found.append(Damage(self.path, f"lines longer than {MAX_LINE:,} bytes", count=self.long_lines))
        return found


# -- status and the journal --------------------------------------------------------------------


def _paragraphs(lines: Lines, damage: List[Damage]) -> Iterator[Tuple[int, List[bytes]]]:
    """(first line number, lines) of each blank-line separated paragraph.

    Paragraphs are cut apart with one regular expression per block, so runs of blank lines and the
    lines past a cut cost no Python step each. A paragraph longer than any real one
    (MAX_PARAGRAPH_LINES, MAX_PARAGRAPH_BYTES) is cut, and the cut is damage."""
    pending = b""  # the start of a paragraph that may go on in the next block
    pending_line = 1
    skipping = False  # inside a paragraph that was cut: drop text up to its end
    for first, block in lines.blocks():
        if skipping:
            # The newline that ended the previous block comes first.
            joined = b"\n" + block
            separator = _SEPARATOR.search(joined)
            if separator is None:
                continue
            skipping = False
            text, number = joined[separator.end() :], first - 1 + joined.count(b"\n", 0, separator.end())
        elif pending:
            text, number = pending + b"\n" + block, pending_line
        else:
            text, number = block, first
        position = 0
        for separator in _SEPARATOR.finditer(text):
            yield from _paragraph(text[position : separator.start()], number, lines.path, damage)
            number += text.count(b"\n", position, separator.end())
            position = separator.end()
        pending, pending_line = text[position:], number
        if len(pending) > MAX_PARAGRAPH_BYTES:
            yield from _paragraph(pending, number, lines.path, damage)
            pending, skipping = b"", True
    if pending:
        yield from _paragraph(pending, pending_line, lines.path, damage)


def _paragraph(text: bytes, number: int, source: bytes, damage: List[Damage]):
    """The paragraph in `text` (no blank line inside, perhaps one before or after), capped."""
    paragraph = text.split(b"\n", MAX_PARAGRAPH_LINES)
    if paragraph and not paragraph[0].strip():
        paragraph.pop(0)
        number += 1
    while paragraph and not paragraph[-1].strip():
        paragraph.pop()
    if not paragraph:
        return
    if len(paragraph) > MAX_PARAGRAPH_LINES or len(text) > MAX_PARAGRAPH_BYTES:
        damage.append(
            Damage(source, "an entry longer than any package's: the rest of it was not read", number)
        )
        kept, size = [], 0
        for line in paragraph[:MAX_PARAGRAPH_LINES]:
            size += len(line) + 1
            if size > MAX_PARAGRAPH_BYTES:
                break
            kept.append(line)
        paragraph = kept
    yield number, paragraph


def parse_paragraph(
    lines: List[bytes], source: bytes, first_line: int
) -> Tuple[Dict[str, str], List[Damage]]:
    """Fields of one deb822 paragraph; lines that are neither a field nor a continuation are damage."""
    fields: Dict[str, str] = {}
    damage: List[Damage] = []
    current: str | None = None
    for offset, raw in enumerate(lines):
        line = raw.rstrip(b"\r")
        number = first_line + offset
        if line[:1] in (b" ", b"\t"):
            if current is None:
                damage.append(Damage(source, "continuation line before any field", number))
            else:
                fields[current] += "\n" + line.decode("utf-8", "surrogateescape")
            continue
        match = _FIELD.match(line)
        if not match or b"\0" in line:
            damage.append(Damage(source, f"malformed line {_excerpt(line)}", number))
            current = None
            continue
        current = match.group(1).decode("ascii", "replace").lower()
        fields[current] = match.group(2).strip().decode("utf-8", "surrogateescape")
    return fields, damage


def _excerpt(line: bytes) -> str:
    text = line[:60].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(line) > 60 else ""))


def _package(fields: Dict[str, str], source: bytes, line: int) -> Tuple[Package | None, List[Damage]]:
    damage = []
    name = fields.get("package", "").strip()
    if not name:
        return None, [Damage(source, "an entry without a Package field", line)]
    package = Package(
        name=name,
        version=fields.get("version", "").strip(),
        architecture=fields.get("architecture", "").strip(),
        status=" ".join(fields.get("status", "").split()),
        multi_arch=fields.get("multi-arch", "").strip(),
    )
    if len(package.status.split()) != 3:
        damage.append(Damage(source, f"package {name}: missing or malformed Status field", line))
    elif package.state in UNPACKED_STATES and not package.version:
        damage.append(Damage(source, f"package {name}: installed but without a Version field", line))
    for entry in fields.get("conffiles", "").split("\n"):
        if not entry.strip():
            continue
        conffile = parse_conffile(entry)
        if conffile is None:
            damage.append(Damage(source, f"package {name}: malformed Conffiles line {entry.strip()!r}", line))
        else:
            package.conffiles.append(conffile)
    return package, damage


def parse_conffile(entry: str) -> Conffile | None:
    """One line of a Conffiles field: ` /etc/x md5 [obsolete] [remove-on-upgrade]`."""
    text = entry.strip()
    obsolete = False
    while True:
        head, _, flag = text.rpartition(" ")
        if flag == "obsolete":
            obsolete = True
        elif flag != "remove-on-upgrade":
            break
        text = head
    path, _, md5 = text.rpartition(" ")
    if not path.startswith("/") or not (
        md5 == "newconffile" or _MD5.match(md5.encode("utf-8", "surrogateescape"))
    ):
        return None
    return Conffile(path.encode("utf-8", "surrogateescape"), md5.lower(), obsolete)


def read_status(target: Target) -> Tuple[Dict[Tuple[str, str], Package], List[Damage], int]:
    """The packages of `status` with the journal in `updates/` applied, the damage found, and the
    number of journal entries applied. Raises OSError when the status file cannot be read."""
    packages: Dict[Tuple[str, str], Package] = {}
    damage: List[Damage] = []
    _load(Lines(target, STATUS, MAX_STATUS), packages, damage)
    applied = 0
    for name in _journal(target, damage):
        path = UPDATES + b"/" + name
        try:
            entry = Lines(target, path, MAX_LIST)
        except OSError as error:
            damage.append(Damage(path, f"cannot read the journal entry: {error.strerror or error}"))
            continue
        _load(entry, packages, damage)
        applied += 1
    return packages, damage, applied


def _journal(target: Target, damage: List[Damage]) -> List[bytes]:
    try:
        names = target.listdir(UPDATES)
    except FileNotFoundError:
        return []
    except OSError as error:
        damage.append(Damage(UPDATES, f"cannot list the journal: {error.strerror or error}"))
        return []
    digits = sorted((n for n in names if _DIGITS.match(n)), key=int)
    return digits[:MAX_JOURNAL_ENTRIES]


def _load(lines: Lines, packages: Dict[Tuple[str, str], Package], damage: List[Damage]) -> None:
    source = lines.path
    entries = 0
    before = len(damage)
    try:
        for line, paragraph in _paragraphs(lines, damage):
            entries += 1
            if entries > MAX_PACKAGES:
                damage.append(
                    Damage(source, f"more than {MAX_PACKAGES:,} entries: the rest was not read", line)
                )
                break
            fields, bad = parse_paragraph(paragraph, source, line)
            package, more = _package(fields, source, line)
            bad += more
            room = MAX_DAMAGE - (len(damage) - before)
            damage.extend(bad[: max(room, 0)])
            if package is not None:
                packages[package.key] = package
            if len(bad) > room:
                damage.append(
                    Damage(source, f"more than {MAX_DAMAGE:,} damaged lines: the rest was not read", line)
                )
                break
    except OSError as error:
        damage.append(Damage(source, f"reading stopped: {error.strerror or error}"))
    damage.extend(lines.damage())
    if lines.unterminated:
        damage.append(Damage(source, "the file does not end with a newline: it may be truncated"))


# -- per-package files in info/ ----------------------------------------------------------------


def info_path(target: Target, package: Package, suffix: str) -> bytes | None:
    """The path of `info/<pkg>[:<arch>].<suffix>` that exists, or None."""
    for base in package.info_names():
        path = INFO + b"/" + base.encode("utf-8", "surrogateescape") + b"." + suffix.encode()
        if target.exists(path):
            return path
    return None


def _nonempty_lines(block: bytes) -> int:
    """How many of the block's lines are not empty, without a Python step per line: with every
    other byte made an `x`, a non-empty line is an `x` at the start or after a newline."""
    marked = block.translate(_MARK)
    return marked.count(b"\nx") + marked.startswith(b"x")


def _first_bad(block: bytes, first: int, valid: re.Pattern) -> int:
    """The number of the first non-empty line of `block` that `valid` does not match."""
    for number, line in enumerate(block.split(b"\n"), first):
        if line and not valid.fullmatch(line):
            return number
    return first


def read_list(target: Target, path: bytes) -> Tuple[List[bytes], List[Damage]]:
    """The absolute paths of an `info/*.list` file (without `/.`), at most MAX_PATHS of them.

    Each block of lines is matched with one regular expression: a file of millions of malformed
    lines costs no Python work per line."""
    lines = Lines(target, path, MAX_LIST)
    damage = []
    paths: List[bytes] = []
    bad = 0
    first_bad = None
    try:
        for first, block in lines.blocks():
            if not block.strip(b"\n"):
                continue
            found = _LIST_LINE.findall(block)
            valid = len(found)
            if len(paths) + valid <= MAX_PATHS:
                # The common case, without a Python step per match (a .list of 100 paths: 30 µs).
                paths += [line.rstrip(b"/") or b"/" for line in found if line != b"/."]
            else:
                for match in _LIST_LINE.finditer(block):
                    line = match.group()
                    if line == b"/.":
                        continue
                    if len(paths) >= MAX_PATHS:
                        damage.append(_too_many(path, first + block.count(b"\n", 0, match.start())))
                        return paths, damage + lines.damage()
                    paths.append(line.rstrip(b"/") or b"/")
            nonempty = _nonempty_lines(block)
            if nonempty > valid:
                bad += nonempty - valid
                first_bad = first_bad or _first_bad(block, first, _LIST_LINE)
    except OSError as error:
        damage.append(Damage(path, f"reading stopped: {error.strerror or error}"))
    if lines.unterminated:
        damage.append(Damage(path, "the file does not end with a newline: it may be truncated"))
    if bad:
        damage.append(Damage(path, "lines that are not absolute paths", first_bad, bad))
    return paths, damage + lines.damage()


def _too_many(path: bytes, line: int) -> Damage:
    return Damage(
        path, f"more than {MAX_PATHS:,} paths, more than any package holds: the rest was not read", line
    )


def read_md5sums(target: Target, path: bytes) -> Tuple[Dict[bytes, str], List[Damage]]:
    """Absolute path -> md5 from an `info/*.md5sums` file, at most MAX_PATHS of them. A last line
    without its newline is dropped: a truncated file cuts it anywhere, also inside the path."""
    lines = Lines(target, path, MAX_LIST)
    damage = []
    sums: Dict[bytes, str] = {}
    bad = 0
    first_bad = None
    last = 0
    try:
        for first, block in lines.blocks():
            last = first + block.count(b"\n")
            if lines.unterminated:
                break
            if not block.strip(b"\n"):
                continue
            found = _MD5_LINE.findall(block)
            valid = len(found)
            if len(sums) + valid <= MAX_PATHS:
                # The common case, without a match object per line.
                sums.update([(b"/" + name.lstrip(b"/"), digest.lower().decode()) for digest, name in found])
            else:
                for match in _MD5_LINE.finditer(block):
                    name = b"/" + match.group(2).lstrip(b"/")
                    if name not in sums and len(sums) >= MAX_PATHS:
                        damage.append(_too_many(path, first + block.count(b"\n", 0, match.start())))
                        return sums, damage + lines.damage()
                    sums[name] = match.group(1).decode().lower()
            nonempty = _nonempty_lines(block)
            if nonempty > valid:
                bad += nonempty - valid
                first_bad = first_bad or _first_bad(block, first, _MD5_LINE)
    except OSError as error:
        damage.append(Damage(path, f"reading stopped: {error.strerror or error}"))
    if lines.unterminated:
        damage.append(Damage(path, "the file does not end with a newline: it is truncated", last))
    if bad:
        damage.append(Damage(path, "malformed lines", first_bad, bad))
    return sums, damage + lines.damage()


def list_owners(target: Target) -> Set[str]:
    """Base names (`pkg` or `pkg:arch`) of every `info/*.list` file."""
    try:
        names = target.listdir(INFO)
    except OSError:
        return set()
    return {os.fsdecode(n[: -len(b".list")]) for n in names if n.endswith(b".list")}
