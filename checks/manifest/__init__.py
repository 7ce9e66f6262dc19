"""Verifying installed files against a package manager's per-file manifest: what `portage`, `pacman`
and `apk` share. Each reads its own database into `Package`s with their `Entry`s (or the `Damage`
found while reading them, see `entries`); `ManifestChecker` hashes the files through the shared
engine and turns every difference into the same findings, with the same severities, as `debian`."""

from __future__ import annotations

from typing import Iterator, Union

from fsaudit.checker import Checker, Option
from fsaudit.model import Finding
from fsaudit.outcomes import ANOMALY_CODES
from fsaudit.target import Target
from fsaudit_checks.manifest.entries import Damage, Package
from fsaudit_checks.manifest.verification import Verification

CODES = {
    "missing": "a file or symlink the package installed is gone",
    "content-differs": "a file's content differs from the packaged one, and its mtime does not show a "
    "later write (or shows one inside the suspect window): silent damage",
    "modified-after-install": "a file's content differs and its mtime is after the package's "
    "installation, outside the suspect window: a local modification (or damage: look at it)",
    "wrong-type": "a directory, FIFO, device, socket or symlink stands where the package installed "
    "something else",
    "link-differs": "a packaged symlink points somewhere else",
    "metadata-differs": "mode, owner or group differ from the package while the content is intact",
    "directory-missing": "a directory the package installed is gone",
    "unreadable": "a packaged file could not be read (I/O error): it was not verified",
    **ANOMALY_CODES,
    "conffile-changed": "a configuration file differs from the packaged one (an edit by the "
    "administrator?); details say whether its mtime is after the installation",
    "conffile-missing": "a configuration file of a package is gone",
    "database-damaged": "the package database is malformed or inconsistent; everything readable was "
    "still verified",
}


# Repair checks again only the packages it restored.
PACKAGES = Option("packages", "verify only these packages (names as the findings give them)", multiple=True)


class ManifestChecker(Checker):
    """Base of the checkers that verify files against a package manager's per-file manifest.

    Subclasses set `name`, `covers`, the docstring, and write `packages(target)` (the database read
    into `Package`s and top-level `Damage`s) and `reinstall_command(package)`."""

    category = "os-files"
    codes = CODES
    options = (PACKAGES,)
    # Words for the database in findings and advice.
    database_advice = "restore the package database from a backup"

    def packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        raise NotImplementedError

    def reinstall_command(self, package: Package) -> str:
        raise NotImplementedError

    def package_count(self, target: Target) -> int | None:
        """How many packages there are, for progress (None: not known in advance)."""
        return None

    def excluded(self, path: bytes) -> bool:
        """Whether a missing `path` is expected (the package manager was told not to install it)."""
        return False

    def advice(self, package: Package) -> str:
        """Reinstalling the package, said for the machine where it must happen."""
        command = self.reinstall_command(package)
        root = getattr(self, "_root_text", None)
        if root is None:
            return f"reinstall the package {package.name}: {command}"
        return (
            f"reinstall the package {package.name} inside the VM, not on this host (this audit read the "
            f"image at {root}): {command}; or restore its files from this host: fsaudit repair REPORT.json "
            f"--root {root}"
        )

    def run(self, target: Target) -> Iterator[Finding]:
        self._root_text = None if target.live else target.root_text
        yield from Verification(self, target).run()
