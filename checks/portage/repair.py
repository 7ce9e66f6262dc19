"""Repairing what the portage check found: `emerge --oneshot =CAT/PF` on the running system, a binary
package's bytes in a mounted image.

emerge rebuilds (or takes from a binary package) exactly the installed version when the atom names
it, and `--oneshot` keeps the world file as it is. Before the transaction, `emerge --pretend` shows
what it would do: an atom the repository no longer has an ebuild for, or a merge that would also
install, upgrade or downgrade another package, is refused with why. In an image, nothing is built:
Portage keeps no copy of what it installed, so files come only from a binary package of the
installed version (`PKGDIR`, or `--archives`), checked against the md5 CONTENTS records.
"""

from __future__ import annotations

import re
from typing import Dict, Iterator, List, Sequence, Tuple, Union

from fsaudit.repair import Step
from fsaudit.target import Target
from fsaudit_checks.manifest.archive import Member
from fsaudit_checks.manifest.entries import Damage, Package
from fsaudit_checks.manifest.repair import ManifestRepairer
from fsaudit_checks.portage import binpkg, vdb
from fsaudit_checks.portage.protect import read_config_protect

# emerge's merge list: "[ebuild   R    ] sys-apps/sed-4.9::gentoo  USE=..." (or "[binary ...]").
_MERGE = re.compile(r"^\[(ebuild|binary)\s+([^\]]*)\]\s+(\S+)")
_NO_EBUILD = re.compile(
    r'there are no (?:ebuilds|binary packages)(?: built with USE flags)? to satisfy "([^"]+)"'
)


def pretend(output: str, atoms: set) -> Tuple[set, List[str]]:
    """What an `emerge --pretend` run says: (atoms it has nothing to satisfy, the other merges it
    would make besides reinstalling `atoms` as they are)."""
    missing = {match.group(1) for match in _NO_EBUILD.finditer(output)}
    others = []
    for line in output.splitlines():
        match = _MERGE.match(line.strip())
        if not match:
            continue
        flags, package = match.group(2), match.group(3).split("::", 1)[0]
        if f"={package}" in atoms and "R" in flags and not set(flags) & set("NSUD"):
            continue
        others.append(f"{flags.strip() or '?'} {package}")
    return missing, others


class PortageRepairer(ManifestRepairer):
    """Restores the files of Portage packages: emerge on the running system, a binary package in an
    image."""

    manager = "Portage"
    transaction_note = (
        "(simulated first with --pretend and refused if emerge would also merge another package or has "
        "no ebuild of the installed version; what is still damaged afterwards is merged once more)"
    )

    def __init__(self, check: str, request):
        super().__init__(check, request)
        self.protect = read_config_protect(self.target)

    def read_packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        return vdb.read_packages(target, self.protect)

    def valid(self, package: Package) -> bool:
        category, _, pf = self._parts(package)
        match = vdb.PF.match(pf.encode("utf-8", "surrogateescape"))
        return bool(
            vdb.CATEGORY.match(category.encode("utf-8", "surrogateescape"))
            and match
            and package.version
            and f"{category}/{match.group('pn').decode()}" == package.name
            and not category.startswith("-")
        )

    @staticmethod
    def _parts(package: Package) -> Tuple[str, str, str]:
        """(category, PN, PF) of the package."""
        category, _, pn = package.name.partition("/")
        return category, pn, f"{pn}-{package.version}"

    def atom(self, package: Package) -> str:
        category, _, pf = self._parts(package)
        return f"={category}/{pf}"

    def label(self, package: Package) -> str:
        return self.atom(package)[1:]

    def reinstall_words(self, package: Package) -> str:
        return f"reinstall the package inside the VM (emerge --oneshot {self.atom(package)})"

    def cached(self, target: Target, package: Package) -> List[bytes]:
        category, pn, pf = self._parts(package)
        return binpkg.candidates(target, binpkg.pkgdirs(target), category, pf, pn)

    def archived(self, directory: Target, package: Package) -> List[bytes]:
        category, pn, pf = self._parts(package)
        return binpkg.candidates(directory, [b"/"], category, pf, pn, flat=True)

    def members(self, source: Target, path: bytes, package: Package) -> Iterator[Member]:
        category, _, pf = self._parts(package)
        return binpkg.package_members(source, path, category, pf)

    def no_package_file(self, package: Package) -> str:
        category, _, pf = self._parts(package)
        return (
            f"Portage keeps no copy of what it installed, and no binary package of {category}/{pf} is in the "
            f"image's PKGDIR (/var/cache/binpkgs) or --archives: run emerge --oneshot {self.atom(package)} "
            f"inside the VM, or give the directory of a binary package of exactly that version built with "
            "the same USE flags (CATEGORY/PF.gpkg.tar or .tbz2) with --archives DIR"
        )

    # -- the running system ------------------------------------------------------------------------

    def transaction(self, steps: Sequence[Step], simulate: bool = False) -> List[str]:
        command = ["emerge", "--oneshot"]
        if simulate:
            command += ["--pretend", "--color", "n"]
        return [*command, "--", *[self.atom(step.data.package) for step in steps]]

    def prepare(
        self, steps: List[Step], env: Dict[str, str], say
    ) -> Tuple[List[Step], List[Tuple[Step, str]]]:
        return self.simulated(steps, env, self._lacking, self._unavailable, "merge")

    def _lacking(self, output: str, steps: List[Step]) -> Tuple[List[Step], List[str]]:
        missing, others = pretend(output, {self.atom(step.data.package) for step in steps})
        return [step for step in steps if self.atom(step.data.package) in missing], others

    def _unavailable(self, package: Package) -> str:
        return (
            f"the configured repositories have no ebuild of {self.label(package)} any more: get that "
            "ebuild (or a binary package of it) back into a repository, or update the package"
        )
