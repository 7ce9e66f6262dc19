"""Checker `apk`: every file apk installed on an Alpine system, verified against its installed
database (`/lib/apk/db/installed`) without running apk."""

from __future__ import annotations

from typing import Iterator, Union

from fsaudit.checker import Skip
from fsaudit.target import Target
from fsaudit_checks.apk import cache, installed
from fsaudit_checks.apk.protected import read_protected_paths
from fsaudit_checks.manifest import ManifestChecker
from fsaudit_checks.manifest.entries import Damage, Package


class ApkChecker(ManifestChecker):
    """Verify every file installed by apk (Alpine): SHA-1/SHA-256 digests, links, mode, owner."""

    name = "apk"
    covers = "system files (Alpine packages)"
    repairer = "fsaudit_checks.apk.repair:ApkRepairer"
    database_advice = (
        "apk's installed database (/lib/apk/db/installed) is damaged: restore it from a backup, or "
        "reinstall the package (apk fix) so that apk writes its entry again"
    )

    def applies(self, target: Target) -> bool:
        if not target.exists(installed.INSTALLED, follow=True):
            raise Skip("no apk database (/lib/apk/db/installed)")
        return True

    def packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        protected = read_protected_paths(target)
        for package in installed.read_packages(target, protected):
            if isinstance(package, Package):
                cached = cache.find(target, package)
                if cached is not None:
                    package.identity["cached_package"] = cached
            yield package

    def reinstall_command(self, package: Package) -> str:
        return f"apk fix {package.name}"
