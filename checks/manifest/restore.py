"""Restoring a package's damaged paths in a mounted image, from its package file, running nothing.

The package file lies in the tenant's image (or in `--archives`): it is read with the bounded reader
of `manifest.archive`, it must name the installed package and version, and a file is written only
when the bytes read from it have the digest the image's database records. Owner, mode and mtime are
the database's where it records them, else the package file's (names mapped through the image's
own accounts). When a package file fails for a path (damaged, an impostor), the next one is tried.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Dict, List

from fsaudit.repair import Outcome, Section, Stop
from fsaudit.repair.image import DEFAULT_DIRECTORY, Accounts, Image, ImageError, Meta, Verified, restore_each
from fsaudit.target import Target
from fsaudit_checks.manifest.archive import ArchiveError, Member
from fsaudit_checks.manifest.entries import DIRECTORY, FILE, FILE_OR_SYMLINK, SYMLINK, Entry, digest_matches
from fsaudit_checks.manifest.repair import ManifestRepairer, ManifestStep, Owned, described_fully

_DEFAULT_MODES = {DIRECTORY: 0o755, SYMLINK: 0o777}


def restore_steps(
    repairer: ManifestRepairer, section: Section, say: Callable[[str], None], stop: Stop
) -> Outcome:
    """Restore each step's paths, package after package; a stop request leaves the rest."""
    accounts = Accounts(repairer.target)
    with Image(repairer.request.root) as image:
        restorer = _Restorer(repairer, image, accounts)
        return restore_each(section, say, stop, lambda step: restorer.package(step.data))


def _checked(fileobj, entry: Entry) -> Verified:
    """The member's bytes, checked against the database's digest (a prefix of 40+ digits will do)."""
    return Verified(fileobj, entry.algorithm, entry.digest or "", matches=digest_matches)


class _Restorer:
    def __init__(self, repairer: ManifestRepairer, image: Image, accounts: Accounts):
        self.repairer = repairer
        self.image = image
        self.accounts = accounts
        self.keep_conffiles = repairer.request.allow_conffiles

    def package(self, step: ManifestStep) -> List[str]:
        """Write the step's paths; the problems, one per path not restored."""
        left: Dict[bytes, Owned] = {owned.entry.path: owned for owned in step.paths}
        problems: Dict[bytes, str] = {}
        for source, path in step.sources:
            if not left:
                break
            shown = os.fsdecode(source.host_path(path))
            try:
                self._from_package_file(source, path, step, left, problems)
            except (ArchiveError, OSError) as error:
                reason = getattr(error, "strerror", None) or str(error)
                for missing in left:
                    problems[missing] = f"cannot read the package file {shown}: {reason}"
        for owned in list(left.values()):
            if described_fully(owned.entry) and self._from_database(owned, problems):
                del left[owned.entry.path]
        for missing in left:
            problems.setdefault(missing, f"{os.fsdecode(missing)}: the package file does not contain it")
        # One cause (a damaged package file) for many paths is said once.
        return list(dict.fromkeys(problems[path] for path in left))

    def _from_database(self, owned: Owned, problems: Dict[bytes, str]) -> bool:
        try:
            self._write(owned, None, lambda path: DEFAULT_DIRECTORY)
        except ImageError as error:
            problems[owned.entry.path] = str(error)
            return False
        return True

    def _from_package_file(
        self, source: Target, path: bytes, step: ManifestStep, left: Dict[bytes, Owned], problems
    ) -> None:
        directories: Dict[bytes, Meta] = {}

        def parents(where: bytes) -> Meta:
            return directories.get(where, DEFAULT_DIRECTORY)

        for member in self.repairer.members(source, path, step.package):
            if member.kind == "directory":
                directories[member.path] = self._member_meta(member, DIRECTORY)
            owned = left.get(member.path)
            if owned is None:
                continue
            try:
                self._write(owned, member, parents)
            except ImageError as error:
                problems[member.path] = str(error)
                continue
            del left[member.path]
            problems.pop(member.path, None)
            if not left:
                return

    # -- one path ----------------------------------------------------------------------------------

    def _member_meta(self, member: Member, kind: str) -> Meta:
        uid = self.accounts.uid(member.uname, member.uid)
        gid = self.accounts.gid(member.gname, member.gid)
        return Meta(member.mode if member.mode else _DEFAULT_MODES.get(kind, 0o644), uid, gid, member.mtime)

    def _meta(self, entry: Entry, member: Member | None) -> Meta:
        """The database's owner, mode and mtime where it records them, else the package file's."""
        base = (
            self._member_meta(member, entry.kind) if member else Meta(_DEFAULT_MODES.get(entry.kind, 0o644))
        )
        return Meta(
            entry.mode if entry.mode is not None else base.mode,
            entry.uid if entry.uid is not None else base.uid,
            entry.gid if entry.gid is not None else base.gid,
            entry.mtime if entry.mtime is not None else base.mtime,
        )

    def _write(self, owned: Owned, member: Member | None, parents) -> None:
        entry = owned.entry
        where = os.fsdecode(entry.path)
        meta = self._meta(entry, member)
        if entry.kind == DIRECTORY:
            if member is not None and member.kind != "directory":
                raise ImageError(
                    f"{where}: the package file has a {member.kind} there, the database a directory"
                )
            self.image.make_directory(entry.path, meta, parents)
        elif entry.kind == SYMLINK:
            if member is not None and member.kind != "symlink":
                raise ImageError(
                    f"{where}: the package file has a {member.kind} there, the database a symlink"
                )
            link = entry.link if entry.link is not None else member.link
            self.image.write_symlink(entry.path, link, meta, parents)
        elif entry.kind in (FILE, FILE_OR_SYMLINK) and member is not None:
            self._file(entry, member, meta, parents)
        else:
            raise ImageError(f"{where}: nothing to restore it from")

    def _file(self, entry: Entry, member: Member, meta: Meta, parents) -> None:
        where = os.fsdecode(entry.path)
        if member.kind == "symlink" and entry.kind == FILE_OR_SYMLINK:
            # apk records a symlink's digest as that of its target.
            if not digest_matches(hashlib.new(entry.algorithm, member.link).hexdigest(), entry.digest or ""):
                raise ImageError(
                    f"{where}: the package file's link target does not have the digest the package database "
                    "records: not written"
                )
            self.image.write_symlink(entry.path, member.link, meta, parents)
            return
        keep = None
        if entry.conffile and self.keep_conffiles:
            keep = entry.path.rsplit(b"/", 1)[-1] + self.repairer.saved_suffix
        if member.kind == "file":
            if entry.size is not None and member.size != entry.size:
                raise ImageError(
                    f"{where}: the package file's copy has {member.size:,} bytes, the package database "
                    f"records {entry.size:,}: not written"
                )
            checked = _checked(member.fileobj, entry)
            self.image.write_file(
                entry.path, checked.chunks(), meta, checked.problem, parents, keep_old_as=keep
            )
        elif member.kind == "hardlink":
            self._hardlink(entry, member, meta, parents, keep)
        else:
            raise ImageError(f"{where}: the package file has a {member.kind} there, the database a file")

    def _hardlink(self, entry: Entry, member: Member, meta: Meta, parents, keep) -> None:
        """A hard link's content is its target's, earlier in the archive: copy it from the image
        (restored there already, or intact), checked against this path's digest."""
        try:
            with Target(self.image.root).open(member.link, follow=False) as source:
                checked = _checked(source, entry)
                self.image.write_file(
                    entry.path, checked.chunks(), meta, checked.problem, parents, keep_old_as=keep
                )
        except OSError as error:
            raise ImageError(
                f"{os.fsdecode(entry.path)}: its hard link target cannot be read: {error.strerror or error}"
            ) from None
