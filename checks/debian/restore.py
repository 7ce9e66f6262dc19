"""Restoring a package's damaged files in a mounted image from its `.deb`, running nothing from it.

The `.deb` lies on the damaged disk, in the tenant's image: it is read with the bounded reader of
`debfile`, and a file is written only when the bytes read from it have the MD5 that the image's
dpkg database records. Owner and mode are the archive's (names mapped through the image's own
accounts), overridden by the image's `dpkg-statoverride` entries, as dpkg would install them; the
mtime is the archive's, as dpkg sets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List

from fsaudit.repair import Outcome, Section, Stop
from fsaudit.repair.image import DEFAULT_DIRECTORY, Accounts, Image, ImageError, Meta, Verified, restore_each
from fsaudit.target import Target
from fsaudit_checks.debian import debfile
from fsaudit_checks.debian.dpkg_db import DPKG_DIR
from fsaudit_checks.debian.repair import DebStep, PackagedPath

STATOVERRIDE = DPKG_DIR + b"/statoverride"
MAX_STATOVERRIDE = 4 << 20


@dataclass
class Override:
    user: str
    group: str
    mode: int


def read_statoverride(target: Target) -> Dict[bytes, Override]:
    """The image's `dpkg-statoverride` entries (`user group mode path`; `#uid` for a bare id)."""
    try:
        data = target.read_bytes(STATOVERRIDE, limit=MAX_STATOVERRIDE)
    except OSError:
        return {}
    overrides = {}
    for line in data.split(b"\n"):
        fields = line.split(b" ", 3)
        if len(fields) != 4 or not fields[3].startswith(b"/"):
            continue
        try:
            mode = int(fields[2], 8)
        except ValueError:
            continue
        user, group = (field.decode("utf-8", "replace") for field in fields[:2])
        overrides[fields[3]] = Override(user, group, mode & 0o7777)
    return overrides


class _Owners:
    """Owner and mode as dpkg gives them in this image."""

    def __init__(self, target: Target):
        self.accounts = Accounts(target)
        self.overrides = read_statoverride(target)

    def _id(self, name: str, names: Dict[str, int], fallback: int) -> int:
        if name.startswith("#") and name[1:].isdigit():
            return int(name[1:])
        return names.get(name, fallback)

    def meta(self, member: debfile.Member, location: bytes) -> Meta:
        uid = self._id(member.uname, self.accounts.users, member.uid)
        gid = self._id(member.gname, self.accounts.groups, member.gid)
        mode = member.mode
        override = self.overrides.get(location)
        if override is not None:
            uid = self._id(override.user, self.accounts.users, uid)
            gid = self._id(override.group, self.accounts.groups, gid)
            mode = override.mode
        return Meta(mode, uid, gid, member.mtime)


def restore_steps(repairer, section: Section, say: Callable[[str], None], stop: Stop) -> Outcome:
    """Restore each step's files, package after package; a stop request leaves the rest."""
    owners = _Owners(repairer.target)
    conffiles = repairer.request.allow_conffiles
    with Image(repairer.request.root) as image:
        return restore_each(
            section, say, stop, lambda step: restore_package(image, step.data, owners, conffiles)
        )


def _md5_checked(fileobj, expected: str) -> Verified:
    return Verified(fileobj, "md5", expected, called="MD5")


def restore_package(image: Image, step: DebStep, owners: _Owners, conffiles: bool) -> List[str]:
    """Write the step's damaged paths from its .deb; the problems, one per path not restored."""
    wanted = {entry.path: entry for entry in step.paths}
    left = dict(wanted)
    directories: Dict[bytes, Meta] = {}
    problems: List[str] = []

    def parents(path: bytes) -> Meta:
        return directories.get(path, DEFAULT_DIRECTORY)

    try:
        for member in debfile.members(step.source, step.deb):
            if member.kind == "directory":
                directories[member.path] = owners.meta(member, member.path)
            entry = left.pop(member.path, None)
            if entry is None:
                continue
            try:
                _restore(image, member, entry, owners, parents, conffiles)
            except ImageError as error:
                problems.append(str(error))
    except (debfile.DebError, OSError) as error:
        problems.append(f"cannot read the package file {os.fsdecode(step.deb)}: {error}")
        return problems
    problems.extend(f"{os.fsdecode(path)}: the package file does not contain it" for path in left)
    return problems


def _restore(image: Image, member, entry: PackagedPath, owners: _Owners, parents, conffiles: bool) -> None:
    where = os.fsdecode(entry.location)
    meta = owners.meta(member, entry.location)
    if member.kind == "file":
        if not entry.expected:
            raise ImageError(
                f"{where}: the package database has no checksum to verify the package file's copy"
            )
        checked = _md5_checked(member.fileobj, entry.expected)
        keep = (
            entry.location.rsplit(b"/", 1)[-1] + b".dpkg-old"
            if entry.kind == "conffile" and conffiles
            else None
        )
        image.write_file(entry.location, checked.chunks(), meta, checked.problem, parents, keep_old_as=keep)
    elif member.kind == "hardlink":
        _restore_hardlink(image, member, entry, meta, parents)
    elif member.kind == "symlink" and entry.kind == "other":
        image.write_symlink(entry.location, member.link, meta, parents)
    elif member.kind == "directory" and entry.kind == "other":
        image.make_directory(entry.location, meta, parents)
    else:
        raise ImageError(f"{where}: the package file has a {member.kind} there, the database something else")


def _restore_hardlink(image: Image, member, entry: PackagedPath, meta: Meta, parents) -> None:
    """A hard link's content is its target's, written earlier in the archive: copy it from the image
    (restored there already, or intact), checked against this path's MD5."""
    if not entry.expected:
        raise ImageError(f"{os.fsdecode(entry.location)}: the package database has no checksum to verify it")
    target = Target(image.root)
    try:
        with target.open(member.link, follow=False) as source:
            checked = _md5_checked(source, entry.expected)
            image.write_file(entry.location, checked.chunks(), meta, checked.problem, parents)
    except OSError as error:
        raise ImageError(
            f"{os.fsdecode(entry.location)}: its hard link target cannot be read: {error}"
        ) from None
