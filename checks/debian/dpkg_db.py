"""Reading the dpkg database of an audited root without the dpkg binary.

Everything here reads through the Target and trusts nothing: each malformed line is recorded as a
`Damage` (file, line number, what is wrong) and the rest of the file is still used, so the checker
can report the damage and verify everything else.

The status file is parsed here rather than with python-debian's deb822: deb822 silently folds a
garbage line into the previous field or drops it, and a damaged status file is exactly what this
checker must notice.
"""

from __future__ import annotations

import fnmatch
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

# Bounds for files that a damaged disk may have turned into something huge.
MAX_STATUS = 1 << 30
MAX_LIST = 256 << 20
MAX_CONFIG = 1 << 20
MAX_JOURNAL_ENTRIES = 100_000

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


# -- status and the journal --------------------------------------------------------------------


def _paragraphs(data: bytes) -> Iterator[Tuple[int, List[bytes]]]:
    """(first line number, lines) of each blank-line separated paragraph."""
    lines: List[bytes] = []
    start = 1
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip() == b"":
            if lines:
                yield start, lines
                lines = []
            continue
        if not lines:
            start = number
        lines.append(line)
    if lines:
        yield start, lines


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
    if not path.startswith("/") or not (md5 == "newconffile" or _MD5.match(md5.encode())):
        return None
    return Conffile(path.encode("utf-8", "surrogateescape"), md5.lower(), obsolete)


def read_status(target: Target) -> Tuple[Dict[Tuple[str, str], Package], List[Damage], int]:
    """The packages of `status` with the journal in `updates/` applied, the damage found, and the
    number of journal entries applied. Raises OSError when the status file cannot be read."""
    packages: Dict[Tuple[str, str], Package] = {}
    damage: List[Damage] = []
    data = target.read_bytes(STATUS, limit=MAX_STATUS)
    if data and not data.endswith(b"\n"):
        damage.append(Damage(STATUS, "the file does not end with a newline: it may be truncated"))
    _load(data, STATUS, packages, damage)
    applied = 0
    for name in _journal(target, damage):
        path = UPDATES + b"/" + name
        try:
            entry = target.read_bytes(path, limit=MAX_LIST)
        except OSError as error:
            damage.append(Damage(path, f"cannot read the journal entry: {error.strerror or error}"))
            continue
        _load(entry, path, packages, damage)
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


def _load(data: bytes, source: bytes, packages: Dict[Tuple[str, str], Package], damage: List[Damage]) -> None:
    for line, lines in _paragraphs(data):
        fields, bad = parse_paragraph(lines, source, line)
        damage.extend(bad)
        package, bad = _package(fields, source, line)
        damage.extend(bad)
        if package is not None:
            packages[package.key] = package


# -- per-package files in info/ ----------------------------------------------------------------


def info_path(target: Target, package: Package, suffix: str) -> bytes | None:
    """The path of `info/<pkg>[:<arch>].<suffix>` that exists, or None."""
    for base in package.info_names():
        path = INFO + b"/" + base.encode("utf-8", "surrogateescape") + b"." + suffix.encode()
        if target.exists(path):
            return path
    return None


def read_list(target: Target, path: bytes) -> Tuple[List[bytes], List[Damage]]:
    """The absolute paths of an `info/*.list` file (without `/.`)."""
    data = target.read_bytes(path, limit=MAX_LIST)
    damage = []
    if data and not data.endswith(b"\n"):
        damage.append(Damage(path, "the file does not end with a newline: it may be truncated"))
    paths = []
    bad = 0
    first_bad = None
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        if not line.startswith(b"/") or b"\0" in line:
            bad += 1
            first_bad = first_bad or number
            continue
        if line != b"/.":
            paths.append(line.rstrip(b"/") or b"/")
    if bad:
        damage.append(Damage(path, "lines that are not absolute paths", first_bad, bad))
    return paths, damage


def read_md5sums(target: Target, path: bytes) -> Tuple[Dict[bytes, str], List[Damage]]:
    """Absolute path -> md5 from an `info/*.md5sums` file. A last line without its newline is
    dropped: a truncated file cuts it anywhere, also inside the path."""
    data = target.read_bytes(path, limit=MAX_LIST)
    damage = []
    lines = data.split(b"\n")
    if lines and lines[-1]:
        damage.append(Damage(path, "the file does not end with a newline: it is truncated", len(lines)))
    sums: Dict[bytes, str] = {}
    bad = 0
    first_bad = None
    for number, line in enumerate(lines[:-1], 1):
        if not line:
            continue
        md5, sep, name = line[:32], line[32:34], line[34:]
        if not _MD5.match(md5) or sep not in (b"  ", b" *") or not name or b"\0" in name:
            bad += 1
            first_bad = first_bad or number
            continue
        sums[b"/" + name.lstrip(b"/")] = md5.decode().lower()
    if bad:
        damage.append(Damage(path, "malformed lines", first_bad, bad))
    return sums, damage


def list_owners(target: Target) -> Set[str]:
    """Base names (`pkg` or `pkg:arch`) of every `info/*.list` file."""
    try:
        names = target.listdir(INFO)
    except OSError:
        return set()
    return {os.fsdecode(n[: -len(b".list")]) for n in names if n.endswith(b".list")}


# -- diversions --------------------------------------------------------------------------------


@dataclass
class Diversion:
    source: bytes
    to: bytes
    package: str  # ":" for a local diversion made by the administrator


def read_diversions(target: Target) -> Tuple[Dict[bytes, Diversion], List[Damage]]:
    try:
        data = target.read_bytes(DIVERSIONS, limit=MAX_LIST)
    except FileNotFoundError:
        return {}, []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    damage = []
    if len(lines) % 3:
        damage.append(Damage(DIVERSIONS, "the number of lines is not a multiple of 3: it is damaged"))
    diversions = {}
    for index in range(0, len(lines) - 2, 3):
        source, to, package = lines[index : index + 3]
        if not source.startswith(b"/") or not to.startswith(b"/") or not package:
            damage.append(Damage(DIVERSIONS, "a malformed diversion", index + 1))
            continue
        diversions[source] = Diversion(source, to, package.decode("utf-8", "surrogateescape"))
    return diversions, damage


def diverted_location(path: bytes, owner: str, diversions: Dict[bytes, Diversion]) -> bytes:
    """Where the file `path` of package `owner` lives: diverted away unless `owner` made the diversion."""
    diversion = diversions.get(path)
    if diversion is None or diversion.package == owner:
        return path
    return diversion.to


# -- dpkg path filters (path-exclude / path-include) ---------------------------------------------


class PathFilter:
    """dpkg's `path-exclude=`/`path-include=` rules: the last matching rule decides (dpkg(1))."""

    def __init__(self, rules: List[Tuple[bool, bytes]]):
        self.rules = rules

    def excluded(self, path: bytes) -> bool:
        verdict = False
        for exclude, pattern in self.rules:
            if fnmatch.fnmatchcase(path, pattern):
                verdict = exclude
        return verdict

    def __bool__(self) -> bool:
        return bool(self.rules)


def read_path_filter(target: Target) -> PathFilter:
    files = [CONFIG_FILE]
    try:
        names = sorted(target.listdir(CONFIG_DIR))
    except OSError:
        names = []
    # dpkg reads the directory's files in order, skipping editor backups and dotfiles.
    files += [CONFIG_DIR + b"/" + n for n in names if re.match(rb"^[0-9A-Za-z_-]+$", n)]
    rules: List[Tuple[bool, bytes]] = []
    for path in files:
        try:
            text = target.read_bytes(path, limit=MAX_CONFIG)
        except OSError:
            continue
        for line in text.split(b"\n"):
            line = line.strip()
            match = re.match(rb"^(?:--)?(path-exclude|path-include)(?:\s*=\s*|\s+)(\S.*)$", line)
            if match:
                rules.append((match.group(1) == b"path-exclude", match.group(2).strip()))
    return PathFilter(rules)
