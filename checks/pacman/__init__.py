"""Checker `pacman`: every file pacman installed on an Arch Linux system, verified against its local
database without running pacman."""

from __future__ import annotations

import os
import stat
from typing import Iterator, Union

from fsaudit.checker import Option, Skip
from fsaudit.target import Target
from fsaudit_checks.manifest import PACKAGES, ManifestChecker
from fsaudit_checks.manifest.entries import Damage, Package
from fsaudit_checks.pacman import cache, localdb
from fsaudit_checks.pacman.conf import Settings, read_settings


class PacmanChecker(ManifestChecker):
    """Verify every file installed by pacman (Arch Linux): sha256, size, type, link, mode, owner."""

    name = "pacman"
    covers = "system files (Arch Linux packages)"
    repairer = "fsaudit_checks.pacman.repair:PacmanRepairer"
    options = (
        Option("dbpath", "the pacman database directory inside the root (default: pacman.conf's DBPath)"),
        PACKAGES,
    )
    database_advice = (
        "pacman's local database (/var/lib/pacman/local) is damaged: restore it from a backup, or "
        "reinstall the package so that pacman writes its entry again"
    )

    def _settings(self, target: Target) -> Settings:
        settings = read_settings(target)
        if self.settings["dbpath"]:
            settings.dbpath = os.fsencode(self.settings["dbpath"]).rstrip(b"/") or b"/"
        return settings

    def applies(self, target: Target) -> bool:
        local = localdb.local_dir(self._settings(target))
        try:
            present = stat.S_ISDIR(target.stat(local).st_mode)
        except OSError:
            present = False
        if not present:
            raise Skip(f"no pacman database ({os.fsdecode(local)})")
        return True

    def package_count(self, target: Target) -> int | None:
        try:
            return len(localdb.package_dirs(target, self.pacman))
        except OSError:
            return None

    def packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        self.stats["database"] = os.fsdecode(localdb.local_dir(self.pacman))
        for package in localdb.read_packages(target, self.pacman):
            if isinstance(package, Package):
                cached = cache.find(target, self.pacman, package)
                if cached is not None:
                    package.identity["cached_package"] = cached
            yield package

    def excluded(self, path: bytes) -> bool:
        # pacman's own file list writes directories with a trailing slash, and patterns match that.
        return self.pacman.is_noextract(path) or self.pacman.is_noextract(path + b"/")

    def reinstall_command(self, package: Package) -> str:
        return f"pacman -S {package.name}"

    def run(self, target: Target):
        self.pacman = self._settings(target)
        yield from super().run(target)
