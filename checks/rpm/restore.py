"""Restoring a package's damaged files in a mounted image from its cached `.rpm`, running nothing.

The package file is the one whose header digest the image's RPM database recorded at install time
(`RpmRepairer._find_rpm`). `rpmfile` opens it and decompresses its payload (gzip, xz, bzip2; zstd
payloads are streamed here, as rpmfile would hold them whole in memory); the payload's cpio
archive is read here, streaming and bounded. A file is written only when its bytes have the digest
the database records; owner, group, mode and mtime are the database's, link targets too.
"""

from __future__ import annotations

import io
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Callable, Dict, Iterator, List

from fsaudit.bounded import Capped, Window, decompressed_limit, zstd_stream
from fsaudit.repair import Outcome, Section, Stop
from fsaudit.repair.image import DEFAULT_DIRECTORY, Image, ImageError, Meta, Verified, restore_each
from fsaudit.target import Target
from fsaudit_checks.rpm import header as hdr
from fsaudit_checks.rpm.cache import read_package_header
from fsaudit_checks.rpm.compare import Accounts
from fsaudit_checks.rpm.repair import OwnedPath, RpmStep, _accounts

_CHUNK = 1 << 20
_NEWC = (b"070701", b"070702")
MAX_NAME = 4096


class PayloadError(Exception):
    """A package file whose payload cannot be read (damaged, unsupported, or a missing module)."""


@dataclass
class Member:
    path: bytes
    mode: int
    size: int
    nlink: int
    fileobj: IO[bytes]


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise PayloadError("the payload is cut short")
    return data


def _cut_short() -> PayloadError:
    return PayloadError("the payload ends in the middle of a file")


def cpio_members(stream) -> Iterator[Member]:
    """The entries of a cpio "newc" archive (rpm's payload format), streaming: each member's bytes
    must be read before the next is asked for (or they are skipped)."""
    offset = 0
    while True:
        header = _read_exactly(stream, 110)
        if header[:6] not in _NEWC:
            raise PayloadError(
                "the payload is not a cpio archive rpm writes (large-file payloads are not supported)"
            )
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as error:
            raise PayloadError("a damaged cpio header") from error
        mode, nlink, size, namesize = fields[1], fields[4], fields[6], fields[11]
        if not 1 <= namesize <= MAX_NAME:
            raise PayloadError(f"a cpio name of {namesize} bytes")
        name = _read_exactly(stream, namesize).rstrip(b"\0")
        offset += 110 + namesize
        _read_exactly(stream, (-offset) % 4)
        offset += (-offset) % 4
        if name == b"TRAILER!!!":
            return
        window = Window(stream, size, _cut_short)
        yield Member(
            b"/" + name.lstrip(b".").lstrip(b"/"), mode, size, nlink, io.BufferedReader(window, _CHUNK)
        )
        window.skip()
        offset += size
        _read_exactly(stream, (-offset) % 4)
        offset += (-offset) % 4


def payload_members(source: Target, path: bytes) -> Iterator[Member]:
    """The payload entries of the package file `path` (read through `source`). Raises PayloadError."""
    try:
        import rpmfile
        from rpmfile.io_extra import _SubFile
    except ImportError as error:
        raise PayloadError(
            "restoring from a .rpm needs the Python module rpmfile: pip install 'fsaudit[rpm]'"
        ) from error
    # rpmfile trusts the sizes in the headers: read them with our bounded reader first.
    read_package_header(source, path)
    with source.open(path) as handle, ExitStack() as stack:
        try:
            package = rpmfile.RPMFile(fileobj=handle)
            compression = package.headers.get("archive_compression", b"gzip")
        except Exception as error:  # rpmfile raises anything (struct.error, AssertionError, ...)
            raise PayloadError(f"rpmfile cannot read the package file: {type(error).__name__}") from error
        if compression == b"zstd":
            raw = _SubFile(handle, package.data_offset)
            stream = stack.enter_context(zstd_stream(raw, PayloadError, "a zstd payload"))
        elif compression in (b"gzip", b"xz", b"lzma", b"bzip2"):
            stream = package.data_file
        else:
            raise PayloadError(f"unknown payload compression {compression!r}")
        capped = Capped(stream, decompressed_limit(handle.st.st_size), PayloadError, "the payload")
        try:
            yield from cpio_members(io.BufferedReader(capped, _CHUNK))
        except (OSError, EOFError, ValueError) as error:
            raise PayloadError(f"damaged payload: {error}") from error


def restore_steps(repairer, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
    """Restore each step's files, package after package; a stop request leaves the rest."""
    accounts = _accounts(repairer.target)
    config = repairer.request.allow_conffiles
    with Image(repairer.request.root) as image:
        return restore_each(
            section, say, stop, lambda step: restore_package(image, step.data, accounts, config)
        )


def _meta(owned: OwnedPath, accounts: Accounts) -> Meta:
    entry = owned.entry
    uid = accounts.uid_by_name.get(entry.user, 0)
    gid = accounts.gid_by_name.get(entry.group, 0)
    return Meta(entry.mode & 0o7777, uid, gid, entry.mtime or None)


def restore_package(image: Image, step: RpmStep, accounts: Accounts, config: bool) -> List[str]:
    """Write the step's damaged paths; the problems, one per path not restored."""
    left: Dict[bytes, OwnedPath] = {}
    problems: List[str] = []
    for owned in step.paths:
        entry = owned.entry
        try:
            if stat.S_ISLNK(entry.mode):
                image.write_symlink(entry.path, entry.link, _meta(owned, accounts))
            elif stat.S_ISDIR(entry.mode):
                image.make_directory(entry.path, _meta(owned, accounts))
            elif stat.S_ISREG(entry.mode):
                left[entry.path] = owned
            else:
                problems.append(f"{os.fsdecode(entry.path)}: a device or special file: not restored")
        except ImageError as error:
            problems.append(str(error))
    if not left:
        return problems
    try:
        for member in payload_members(step.source, step.rpm):
            owned = left.pop(member.path, None)
            if owned is None:
                continue
            try:
                _restore_file(image, member, owned, accounts, config)
            except ImageError as error:
                problems.append(str(error))
            if not left:
                break
    except (PayloadError, OSError, hdr.HeaderError) as error:
        problems.append(f"cannot read the package file {os.fsdecode(step.rpm)}: {error}")
        return problems
    problems.extend(f"{os.fsdecode(path)}: the package file's payload does not contain it" for path in left)
    return problems


def _restore_file(image: Image, member: Member, owned: OwnedPath, accounts: Accounts, config: bool) -> None:
    entry = owned.entry
    where = os.fsdecode(entry.path)
    if not owned.algorithm or not entry.digest:
        raise ImageError(f"{where}: the package database has no digest to verify the package file's copy")
    if member.size == 0 and member.nlink > 1 and entry.size > 0:
        raise ImageError(f"{where}: a hard link whose content rpm stores with another name: not restored")
    checked = Verified(member.fileobj, owned.algorithm, entry.digest.decode("ascii", "replace").lower())
    keep = (
        entry.path.rsplit(b"/", 1)[-1] + b".rpmsave" if config and entry.flags & hdr.RPMFILE_CONFIG else None
    )
    meta = _meta(owned, accounts)
    image.write_file(
        entry.path, checked.chunks(), meta, checked.problem, lambda path: DEFAULT_DIRECTORY, keep
    )
