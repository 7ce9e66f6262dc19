"""Reading apk's installed database (`/lib/apk/db/installed`), the format apk-tools writes: one
block of `X:value` lines per package, blocks separated by an empty line. `P:` name, `V:` version,
`A:` architecture, `t:` build time, `C:` the package's identity hash, `f:` flags (`S`: file
digests are SHA-256 cut to 160 bits); then per directory `F:` (relative to the root) and its `M:`
owner and mode, per file `R:` (its name in that directory), `a:` owner and mode, `Z:` digest.
Digests are `Q1` + base64 (SHA-1; SHA-256 when 32 bytes long), `Q2` + base64 (SHA-256), or `X1`/`X2`
+ hex. A file without `a:` is root's with mode 0644; the digest of a symlink is that of its target."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Dict, Iterator, List, Optional, Tuple, Union

from fsaudit.target import Target
from fsaudit_checks.apk.protected import ProtectedPaths
from fsaudit_checks.manifest.entries import DIRECTORY, FILE_OR_SYMLINK, Damage, Entry, Package, valid_path
from fsaudit_checks.manifest.lines import TooBig, read_lines

INSTALLED = b"/lib/apk/db/installed"
INSTALLED_LIMIT = 512 << 20
# Lines of one package: far more than the largest real package has.
MAX_ENTRIES = 250_000
NAME = re.compile(r"^[A-Za-z0-9_+.@-]{1,255}$")
VERSION = re.compile(r"^[A-Za-z0-9._+~-]{1,255}$")
ARCH = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_ACL = re.compile(rb"^([0-9]+):([0-9]+):([0-7]{1,6})(?::.*)?$")
DEFAULT_FILE_MODE = 0o644


class DigestError(ValueError):
    """A digest field that apk could not have written."""


def parse_digest(raw: bytes) -> Tuple[str, bytes]:
    """(hashlib algorithm, digest bytes) of a `Q1...`/`Q2...`/`X1...`/`X2...` field."""
    if len(raw) < 3 or raw[1:2] not in (b"1", b"2") or raw[:1] not in (b"Q", b"X"):
        raise DigestError(f"not an apk digest {raw[:60]!r}")
    try:
        value = (
            base64.b64decode(raw[2:], validate=True) if raw[:1] == b"Q" else bytes.fromhex(raw[2:].decode())
        )
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise DigestError(f"not an apk digest {raw[:60]!r}") from None
    if raw[1:2] == b"1" and len(value) == 20:
        return "sha1", value
    if len(value) == 32:
        return "sha256", value
    raise DigestError(f"a digest of {len(value)} bytes {raw[:60]!r}")


def identity_hex(raw: str) -> Optional[str]:
    """The hex of a package's `C:` identity hash, as apk names cached package files by it."""
    try:
        return parse_digest(raw.encode())[1].hex()
    except DigestError:
        return None


class _Block:
    """One package block as it is read."""

    def __init__(self, line: int):
        self.line = line
        self.fields: Dict[bytes, bytes] = {}
        self.entries: List[Union[Entry, Damage]] = []
        self.directory: Optional[Entry] = None
        self.file: Optional[Entry] = None
        self.count = 0


def _acl(raw: bytes) -> Tuple[int, int, int]:
    match = _ACL.match(raw)
    if not match:
        raise ValueError(f"a malformed owner and mode {raw[:60]!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3), 8) & 0o7777


def _line(block: _Block, field: bytes, value: bytes, source: bytes, number: int, protect: ProtectedPaths):
    """Apply one `X:value` line to the block being read; ValueError when it cannot be applied."""
    if field == b"F":
        path = b"/" + value.strip(b"/")
        if path != b"/" and valid_path(path):
            raise ValueError(f"an impossible directory {value[:80]!r}")
        # A directory's owner and mode are not compared: several packages may list one directory
        # with different `M:` values, and only one of them is on the disk.
        block.directory = Entry(path, DIRECTORY)
        block.file = None
        if path != b"/":
            block.entries.append(block.directory)
    elif field == b"M":
        if block.directory is None:
            raise ValueError("an owner and mode before any directory")
        _acl(value)
    elif field == b"R":
        if block.directory is None:
            raise ValueError("a file before any directory")
        if not value or b"/" in value:
            raise ValueError(f"an impossible file name {value[:80]!r}")
        path = block.directory.path.rstrip(b"/") + b"/" + value
        if valid_path(path):
            raise ValueError(f"an impossible file name {value[:80]!r}")
        block.file = Entry(path, FILE_OR_SYMLINK, mode=DEFAULT_FILE_MODE, uid=0, gid=0)
        block.file.conffile = protect.is_config(path)
        block.entries.append(block.file)
    elif field == b"a":
        if block.file is None:
            raise ValueError("an owner and mode before any file")
        block.file.uid, block.file.gid, block.file.mode = _acl(value)
    elif field == b"Z":
        if block.file is None:
            raise ValueError("a digest before any file")
        algorithm, digest = parse_digest(value)
        if algorithm == "sha1" and b"S" in block.fields.get(b"f", b""):
            algorithm = "sha256"  # SHA-256 cut to 160 bits: compared as a prefix
        block.file.algorithm, block.file.digest = algorithm, digest.hex()
    elif field not in block.fields:
        block.fields[field] = value


def _package(block: _Block, source: bytes) -> Package:
    text = {key: value.decode("utf-8", "surrogateescape") for key, value in block.fields.items()}
    name, version, arch = text.get(b"P", ""), text.get(b"V", ""), text.get(b"A", "")
    problems = []
    if not NAME.match(name):
        problems.append(Damage(source, f"a package without a valid name (P:{name[:60]!r})", line=block.line))
    if not VERSION.match(version):
        problems.append(Damage(source, f"package {name[:60]}: no valid version (V:)", line=block.line))
    if arch and not ARCH.match(arch):
        arch = ""
    built = None
    try:
        built = float(int(text.get(b"t", "")))
    except ValueError:
        pass
    identity = {}
    if text.get(b"C"):
        identity["checksum"] = text[b"C"]
    if text.get(b"o"):
        identity["origin"] = text[b"o"]
    # apk gives every file the mtime the archive recorded, which is at most the build time: a later
    # mtime is a write after the installation.
    return Package(
        name=name,
        version=version,
        architecture=arch,
        installed=built,
        database=source,
        identity=identity,
        entries=problems + block.entries,
    )


def read_packages(target: Target, protect: ProtectedPaths) -> Iterator[Union[Package, Damage]]:
    """Every package of the installed database, in its order."""
    block: Optional[_Block] = None
    try:
        with target.open(INSTALLED) as handle:
            for number, line in read_lines(handle, INSTALLED_LIMIT):
                if line is None:
                    if block is not None:
                        block.entries.append(Damage(INSTALLED, "a line longer than any path", line=number))
                    else:
                        yield Damage(INSTALLED, "a line longer than any path", line=number)
                    continue
                if len(line) < 2:
                    yield from _flush(block)
                    block = None
                    continue
                if block is None:
                    block = _Block(number)
                if line[1:2] != b":":
                    block.entries.append(Damage(INSTALLED, f"a malformed line {line[:80]!r}", line=number))
                    continue
                block.count += 1
                if block.count > MAX_ENTRIES:
                    if block.count == MAX_ENTRIES + 1:
                        block.entries.append(
                            Damage(
                                INSTALLED,
                                f"a package of more than {MAX_ENTRIES:,} lines: the rest of it is not read",
                                line=number,
                            )
                        )
                    continue
                try:
                    _line(block, line[:1], line[2:], INSTALLED, number, protect)
                except ValueError as error:
                    block.entries.append(Damage(INSTALLED, str(error), line=number))
    except TooBig as error:
        yield Damage(INSTALLED, str(error))
    except OSError as error:
        yield Damage(INSTALLED, f"cannot be read to its end: {error.strerror or error}")
    yield from _flush(block)


def _flush(block: Optional[_Block]) -> Iterator[Union[Package, Damage]]:
    if block is None:
        return
    if block.fields:
        yield _package(block, INSTALLED)
    else:
        yield from (item for item in block.entries if isinstance(item, Damage))
