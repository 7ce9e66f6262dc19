"""Checker `portage`: every file Portage installed on a Gentoo system, verified against its
installed-package database (`/var/db/pkg`) without running Portage."""

from __future__ import annotations

import stat
from typing import Iterator, Union

from fsaudit.checker import Skip
from fsaudit.target import Target
from fsaudit_checks.manifest import CODES, ManifestChecker
from fsaudit_checks.manifest.entries import Damage, Package
from fsaudit_checks.portage import vdb
from fsaudit_checks.portage.protect import read_config_protect


class PortageChecker(ManifestChecker):
    """Verify every file installed by Portage (Gentoo): md5 and mtime of CONTENTS, links, directories."""

    name = "portage"
    covers = "system files (Gentoo packages)"
    repairer = "fsaudit_checks.portage.repair:PortageRepairer"
    # Portage records no owner or mode.
    codes = {code: meaning for code, meaning in CODES.items() if code != "metadata-differs"}
    database_advice = (
        "Portage's package database (/var/db/pkg) is damaged: restore it from a backup, or reinstall "
        "the package so that Portage writes its entry again"
    )

    def applies(self, target: Target) -> bool:
        try:
            present = stat.S_ISDIR(target.stat(vdb.VDB).st_mode) and bool(vdb.package_dirs(target))
        except OSError:
            present = False
        if not present:
            raise Skip("no Portage package database (/var/db/pkg)")
        return True

    def package_count(self, target: Target) -> int | None:
        try:
            return len(vdb.package_dirs(target))
        except OSError:
            return None

    def packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        protect = read_config_protect(target)
        self.stats["config_protect"] = " ".join(protect.protect)
        self.stats["config_protect_mask"] = " ".join(protect.mask)
        yield from vdb.read_packages(target, protect)

    def reinstall_command(self, package: Package) -> str:
        return f"emerge --oneshot {package.identity.get('atom') or package.name}"
