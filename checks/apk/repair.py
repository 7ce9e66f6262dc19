"""Repairing what the apk check found: `apk fix` on the running system, the cached `.apk`'s bytes in a
mounted image.

`apk fix` reinstalls the installed package (the same identity hash, so exactly the installed
version) from the repositories or apk's cache, and says "[APK unavailable, skipped]" when neither has
it. Before the transaction, `apk fix --simulate` shows what it would do: a package apk cannot get,
or a transaction that would also install, upgrade or remove another package, is refused with why.
"""

from __future__ import annotations

import re
from typing import Dict, Iterator, List, Sequence, Tuple, Union

from fsaudit.repair import Step
from fsaudit.target import Target
from fsaudit_checks.apk import cache, installed
from fsaudit_checks.apk.protected import read_protected_paths
from fsaudit_checks.manifest.archive import Member
from fsaudit_checks.manifest.entries import Damage, Package
from fsaudit_checks.manifest.repair import ManifestRepairer

# What apk itself accepts as a package name on its command line; a name from the database that
# could be read as an option, a dependency (`name>1`) or a repository tag (`name@edge`) never reaches it.
NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_+.-]{0,254}$")
# apk-tools' progress lines: "(1/2) Reinstalling busybox (1.36.1-r15)", with an optional `@tag`.
_CHANGE = re.compile(
    r"^\(\d+/\d+\) (\[APK unavailable, skipped\] )?([A-Z][a-z-]+(?: pinning)?) (\S+?)(?:@\S+)? \("
)


def simulation(output: str, names: set) -> Tuple[set, List[str]]:
    """What an `apk fix --simulate` run says: (names apk cannot get, the other changes it would make)."""
    unavailable, others = set(), []
    for line in output.splitlines():
        match = _CHANGE.match(line.strip())
        if not match:
            continue
        skipped, verb, name = match.groups()
        if name in names and verb == "Reinstalling":
            if skipped:
                unavailable.add(name)
            continue
        others.append(f"{verb} {name}")
    return unavailable, others


class ApkRepairer(ManifestRepairer):
    """Restores the files of apk packages: `apk fix` on the running system, the cached `.apk` in an
    image."""

    manager = "apk"
    saved_suffix = b".apk-old"
    transaction_note = (
        "(simulated first and refused if apk would also install, upgrade or remove another package, or "
        "cannot get the installed version; what is still damaged afterwards is reinstalled once more)"
    )

    def __init__(self, check: str, request):
        super().__init__(check, request)
        self.protected = read_protected_paths(self.target)

    def read_packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        return installed.read_packages(target, self.protected)

    def valid(self, package: Package) -> bool:
        return bool(NAME.match(package.name) and installed.VERSION.match(package.version))

    def reinstall_words(self, package: Package) -> str:
        return f"reinstall the package {package.name} inside the VM (apk fix {package.name})"

    def cached(self, target: Target, package: Package) -> List[bytes]:
        return cache.candidates(target, cache.CACHE_DIRS, package)

    def archived(self, directory: Target, package: Package) -> List[bytes]:
        return cache.candidates(directory, [b"/"], package)

    def members(self, source: Target, path: bytes, package: Package) -> Iterator[Member]:
        return cache.package_members(source, path, package)

    def no_package_file(self, package: Package) -> str:
        name = cache.file_name(package)
        shown = name.decode("utf-8", "replace") if name else f"{package.name}-{package.version}.apk"
        return (
            f"no package file of {self.label(package)} in the image's apk cache (/etc/apk/cache) or "
            f"--archives: fetch exactly that version (apk fetch {package.name}={package.version}, saved as "
            f"{shown}) into a directory and give it with --archives DIR, or run apk fix {package.name} "
            "inside the VM"
        )

    # -- the running system ------------------------------------------------------------------------

    def transaction(self, steps: Sequence[Step], simulate: bool = False) -> List[str]:
        command = ["apk", "fix"]
        if simulate:
            command.append("--simulate")
        return [*command, "--", *[step.data.package.name for step in steps]]

    def prepare(
        self, steps: List[Step], env: Dict[str, str], say
    ) -> Tuple[List[Step], List[Tuple[Step, str]]]:
        return self.simulated(steps, env, _lacking, self._unavailable, "change")

    def _unavailable(self, package: Package) -> str:
        return (
            f"neither the configured repositories nor apk's cache have {self.label(package)}: put exactly "
            "that version into the cache (/etc/apk/cache) and run again"
        )


def _lacking(output: str, steps: List[Step]) -> Tuple[List[Step], List[str]]:
    unavailable, others = simulation(output, {step.data.package.name for step in steps})
    return [step for step in steps if step.data.package.name in unavailable], others
