"""Reading Portage's installed-package database, the "vdb" (`/var/db/pkg/CATEGORY/PF/`): each
package's `CONTENTS` (`obj PATH MD5 MTIME`, `sym PATH -> TARGET MTIME`, `dir PATH`, `fif PATH`,
`dev PATH`) and the small files beside it (`SLOT`, `repository`, `BUILD_TIME`). Every read is
bounded; a line that cannot be read is a Damage and the rest of the package is still verified."""

from __future__ import annotations

import os
import re
from typing import Iterator, List, Tuple, Union

from fsaudit.target import Target
from fsaudit_checks.manifest.entries import (
    DIRECTORY,
    FILE,
    SPECIAL,
    SYMLINK,
    Damage,
    Entry,
    Package,
    valid_path,
)
from fsaudit_checks.manifest.lines import TooBig, read_lines
from fsaudit_checks.portage.protect import ConfigProtect

VDB = b"/var/db/pkg"
CONTENTS_LIMIT = 256 << 20
SMALL_LIMIT = 4096
MAX_PACKAGES = 1_000_000
CATEGORY = re.compile(rb"^[A-Za-z0-9_][A-Za-z0-9+_.-]{0,127}$")
# PMS: a package name, a dash, a version (with its optional -rN revision).
PF = re.compile(
    rb"^(?P<pn>[A-Za-z0-9_][A-Za-z0-9+_-]{0,127}?)-"
    rb"(?P<pv>[0-9]+(?:\.[0-9]+)*[a-z]?(?:_(?:alpha|beta|pre|rc|p)[0-9]*)*(?:-r[0-9]+)?)$"
)
_OBJ = re.compile(rb"^obj (.+) ([0-9a-fA-F]{32}) ([0-9]+)$")
_SYM = re.compile(rb"^sym (.+) -> (.+) ([0-9]+)$")
_OTHER = re.compile(rb"^(dir|fif|dev) (.+)$")


def package_dirs(target: Target) -> List[Tuple[bytes, bytes]]:
    """(category, PF) of every package directory, sorted; directories of merges in progress
    (`-MERGING-`) and hidden ones are left out."""
    found = []
    for category in sorted(target.listdir(VDB)):
        if not CATEGORY.match(category):
            continue
        try:
            names = sorted(target.listdir(VDB + b"/" + category))
        except OSError:
            continue
        for name in names:
            if name.startswith((b".", b"-")):
                continue
            found.append((category, name))
            if len(found) >= MAX_PACKAGES:
                return found
    return found


def _small(target: Target, path: bytes) -> str:
    try:
        return target.read_bytes(path, limit=SMALL_LIMIT).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def read_contents(target: Target, path: bytes, protect: ConfigProtect) -> Iterator[Union[Entry, Damage]]:
    """The entries of one CONTENTS file."""
    try:
        with target.open(path) as handle:
            for number, line in read_lines(handle, CONTENTS_LIMIT):
                if line is None:
                    yield Damage(path, "a line longer than any path", line=number)
                    continue
                if not line:
                    continue
                item = _entry(line, protect)
                if isinstance(item, str):
                    yield Damage(path, item, line=number)
                else:
                    yield item
    except FileNotFoundError:
        yield Damage(path, "is missing: the package's files are unknown")
    except TooBig as error:
        yield Damage(path, str(error))
    except OSError as error:
        yield Damage(path, f"cannot be read to its end: {error.strerror or error}")


def _entry(line: bytes, protect: ConfigProtect) -> Union[Entry, str]:
    """The entry a CONTENTS line describes, or why it cannot be one."""
    match = _OBJ.match(line)
    if match:
        path, md5, mtime = match.groups()
        entry = Entry(path, FILE, digest=md5.lower().decode(), algorithm="md5", mtime=int(mtime))
        entry.conffile = protect.is_protected(path)
    else:
        match = _SYM.match(line)
        if match:
            path, link, mtime = match.groups()
            entry = Entry(path, SYMLINK, link=link, mtime=int(mtime))
        else:
            match = _OTHER.match(line)
            if not match:
                return f"a malformed line {line[:80]!r}"
            kind, path = match.groups()
            if kind == b"dir":
                entry = Entry(path, DIRECTORY)
            else:
                entry = Entry(path, SPECIAL, special="fifo" if kind == b"fif" else "device")
    problem = valid_path(entry.path)
    return f"{problem}: {entry.path[:80]!r}" if problem else entry


def read_packages(target: Target, protect: ConfigProtect) -> Iterator[Union[Package, Damage]]:
    """Every installed package, in category and name order, its CONTENTS read when it is used."""
    try:
        dirs = package_dirs(target)
    except OSError as error:
        yield Damage(VDB, f"cannot be listed: {error.strerror or error}")
        return
    for category, pf in dirs:
        directory = VDB + b"/" + category + b"/" + pf
        match = PF.match(pf)
        cat, name = os.fsdecode(category), os.fsdecode(pf)
        damage = []
        if match:
            pn, pv = os.fsdecode(match.group("pn")), os.fsdecode(match.group("pv"))
        else:
            pn, pv = name, ""
            damage.append(Damage(directory, "its name is not NAME-VERSION: the version is unknown"))
        identity = {"atom": f"={cat}/{name}"}
        slot, repository = _small(target, directory + b"/SLOT"), _small(target, directory + b"/repository")
        if slot:
            identity["slot"] = slot
        if repository:
            identity["repository"] = repository
        package = Package(
            name=f"{cat}/{pn}",
            version=pv,
            architecture=_small(target, directory + b"/CHOST"),
            database=directory,
            identity=identity,
        )
        package.entries = _entries(target, directory, protect, damage)
        yield package


def _entries(target: Target, directory: bytes, protect: ConfigProtect, damage: List[Damage]):
    yield from damage
    yield from read_contents(target, directory + b"/CONTENTS", protect)
