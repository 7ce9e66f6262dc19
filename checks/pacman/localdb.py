"""Reading pacman's local database (`/var/lib/pacman/local/NAME-VERSION/`): each package's `desc`
(name, version, architecture, install date), `files` (the file list and the `%BACKUP%`
configuration files with their md5) and `mtree` (type, size, mode, owner, mtime, link target, md5
and sha256 of every path). Every read is bounded; what cannot be read is a Damage and the rest of
the package is still verified."""

from __future__ import annotations

import gzip
import re
import zlib
from typing import Dict, Iterator, List, Tuple, Union

from fsaudit.target import Target
from fsaudit_checks.manifest.entries import DIRECTORY, FILE, Damage, Entry, Package, valid_path
from fsaudit_checks.manifest.lines import TooBig, read_lines
from fsaudit_checks.pacman import mtree
from fsaudit_checks.pacman.conf import Settings

DESC_LIMIT = 1 << 20
FILES_LIMIT = 256 << 20
MTREE_LIMIT = 256 << 20
MAX_PACKAGES = 1_000_000
# Paths of one package: far more than the largest real package has.
MAX_FILES = 500_000
NAME = re.compile(r"^[A-Za-z0-9@_+][A-Za-z0-9@._+-]{0,255}$")
VERSION = re.compile(r"^([0-9]+:)?[A-Za-z0-9._+~]{1,255}-[A-Za-z0-9._+]{1,64}$")
ARCH = re.compile(r"^[A-Za-z0-9_]{1,64}$")
MD5 = re.compile(rb"^[0-9a-f]{32}$")


def local_dir(settings: Settings) -> bytes:
    return settings.dbpath.rstrip(b"/") + b"/local"


def package_dirs(target: Target, settings: Settings) -> List[bytes]:
    """The names of the package directories in `local/` (sorted; at most MAX_PACKAGES)."""
    names = []
    for name in sorted(target.listdir(local_dir(settings))):
        if name.startswith(b".") or name == b"ALPM_DB_VERSION":
            continue
        names.append(name)
        if len(names) >= MAX_PACKAGES:
            break
    return names


def _sections(lines: Iterator[Tuple[int, bytes | None]], source: bytes, damage: List[Damage]):
    """(section name, value line) pairs of a `%SECTION%` file."""
    section = None
    for number, line in lines:
        if line is None:
            damage.append(Damage(source, "a line longer than any value", line=number))
            continue
        if not line:
            section = None
            continue
        if section is None:
            if line.startswith(b"%") and line.endswith(b"%") and len(line) > 2:
                section = line[1:-1]
            else:
                damage.append(Damage(source, f"a value outside any section: {line[:80]!r}", line=number))
            continue
        yield section, line


def read_desc(target: Target, path: bytes) -> Tuple[Dict[bytes, List[bytes]], List[Damage]]:
    damage: List[Damage] = []
    values: Dict[bytes, List[bytes]] = {}
    try:
        with target.open(path) as handle:
            for section, line in _sections(read_lines(handle, DESC_LIMIT), path, damage):
                if len(values.setdefault(section, [])) < 4096:
                    values[section].append(line)
    except TooBig as error:
        damage.append(Damage(path, str(error)))
    except OSError as error:
        damage.append(Damage(path, f"cannot be read: {error.strerror or error}"))
    return values, damage


def read_files(target: Target, path: bytes) -> Tuple[Dict[bytes, bool], Dict[bytes, str], List[Damage]]:
    """The `%FILES%` paths (absolute, without a directory's trailing slash) with whether each is a
    directory, in order, and the `%BACKUP%` files with their md5."""
    damage: List[Damage] = []
    files: Dict[bytes, bool] = {}
    backup: Dict[bytes, str] = {}
    try:
        with target.open(path) as handle:
            for section, line in _sections(read_lines(handle, FILES_LIMIT), path, damage):
                if section == b"FILES":
                    if len(files) >= MAX_FILES:
                        damage.append(Damage(path, f"more than {MAX_FILES:,} paths: the rest is not read"))
                        break
                    absolute = b"/" + line.rstrip(b"/")
                    if absolute != b"/" and not valid_path(absolute):
                        files[absolute] = line.endswith(b"/")
                    else:
                        damage.append(Damage(path, f"an impossible path {line[:80]!r}"))
                elif section == b"BACKUP":
                    name, _, md5 = line.rpartition(b"\t")
                    absolute = b"/" + name
                    if valid_path(absolute) or not MD5.match(md5) or len(backup) >= MAX_FILES:
                        damage.append(Damage(path, f"a malformed backup entry {line[:80]!r}"))
                        continue
                    backup[absolute] = md5.decode()
    except TooBig as error:
        damage.append(Damage(path, str(error)))
    except OSError as error:
        damage.append(Damage(path, f"cannot be read: {error.strerror or error}"))
    return files, backup, damage


def _identity(dirname: bytes, values: Dict[bytes, List[bytes]], source: bytes) -> Tuple[dict, List[Damage]]:
    damage = []
    text = {key: (values.get(key) or [b""])[0].decode("utf-8", "surrogateescape") for key in values}
    name, version, arch = text.get(b"NAME", ""), text.get(b"VERSION", ""), text.get(b"ARCH", "")
    from_dir = dirname.decode("utf-8", "surrogateescape")
    if not NAME.match(name) or not VERSION.match(version):
        damage.append(
            Damage(source, "no valid %NAME% and %VERSION%: the package is named after its directory")
        )
        name, _, rest = from_dir.rpartition("-")
        name, _, pkgver = name.rpartition("-")
        version = f"{pkgver}-{rest}" if pkgver else ""
        if not NAME.match(name) or not VERSION.match(version):
            name, version = from_dir, ""
    elif f"{name}-{version}" != from_dir:
        damage.append(Damage(source, f"describes {name} {version}, but its directory is {from_dir}"))
    if arch and not ARCH.match(arch):
        damage.append(Damage(source, "an impossible %ARCH%"))
        arch = ""
    identity = {"name": name, "version": version, "arch": arch}
    for key, field in ((b"INSTALLDATE", "installed"), (b"BUILDDATE", "built")):
        try:
            identity[field] = float(int(text.get(key, "")))
        except ValueError:
            identity[field] = None
    return identity, damage


def read_packages(target: Target, settings: Settings) -> Iterator[Union[Package, Damage]]:
    """Every package of the local database, in name order, its entries read when they are used."""
    local = local_dir(settings)
    try:
        names = package_dirs(target, settings)
    except OSError as error:
        yield Damage(local, f"cannot be listed: {error.strerror or error}")
        return
    for dirname in names:
        directory = local + b"/" + dirname
        values, damage = read_desc(target, directory + b"/desc")
        identity, more = _identity(dirname, values, directory + b"/desc")
        package = Package(
            name=identity["name"],
            version=identity["version"],
            architecture=identity["arch"],
            installed=identity["installed"],
            database=directory,
        )
        package.entries = _entries(target, directory, settings, damage + more)
        yield package


def _entries(
    target: Target, directory: bytes, settings: Settings, damage: List[Damage]
) -> Iterator[Union[Entry, Damage]]:
    yield from damage
    files, backup, problems = read_files(target, directory + b"/files")
    yield from problems
    conffiles = set(backup)
    count = 0
    source = directory + b"/mtree"
    metadata = {b".INSTALL": directory + b"/install", b".CHANGELOG": directory + b"/changelog"}
    have_mtree = True
    try:
        with target.open(source) as handle:
            stream = gzip.GzipFile(fileobj=handle, mode="rb")
            for item in mtree.parse(read_lines(stream, MTREE_LIMIT), source, conffiles, metadata):
                if isinstance(item, Entry):
                    count += 1
                    if count > MAX_FILES:
                        yield Damage(source, f"more than {MAX_FILES:,} paths: the rest is not read")
                        break
                    # What remains in `files` afterwards is what the mtree does not describe.
                    files.pop(item.path, None)
                    if not item.conffile and settings.is_noupgrade(item.path):
                        item.conffile = True
                yield item
    except FileNotFoundError:
        have_mtree = False
        yield Damage(source, "is missing: file types, sizes and checksums are unknown")
    except TooBig as error:
        yield Damage(source, str(error))
    except (OSError, EOFError, zlib.error) as error:
        yield Damage(source, f"cannot be read to its end: {getattr(error, 'strerror', None) or error}")
    if have_mtree and files:
        yield Damage(
            directory + b"/files",
            f"{len(files):,} paths of the file list are not in the mtree (it may be cut short): "
            "only their existence is verified",
        )
    for path, is_dir in files.items():
        if path in backup:
            yield Entry(path, FILE, digest=backup[path], algorithm="md5", conffile=True)
        else:
            yield Entry(path, DIRECTORY if is_dir else FILE)
