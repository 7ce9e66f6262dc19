"""Repairing what the pacman check found: `pacman -U` of the exact installed version on the running
system, the cached package file's bytes in a mounted image.

pacman can only reinstall a version it has a package file of. On the running system, the file comes
from pacman's cache (or `--archives`) when one of exactly the installed version is there and holds
the damaged files with the sha256 the local database records; otherwise `pacman -Sw` downloads it,
but only when the repositories have exactly the installed version (`pacman -S` would otherwise
install another one). Every package file is then installed in one `pacman -U` transaction, after
`pacman -Up` showed that it would install nothing else.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import Dict, Iterator, List, Sequence, Tuple, Union

from fsaudit.repair import Step
from fsaudit.repair.commands import QUERY_TIMEOUT, run, tail
from fsaudit.target import Target
from fsaudit_checks.manifest.archive import ArchiveError, Member
from fsaudit_checks.manifest.entries import FILE, Damage, Package, digest_matches
from fsaudit_checks.manifest.repair import ManifestRepairer
from fsaudit_checks.pacman import cache, localdb
from fsaudit_checks.pacman.conf import read_settings

_NOT_FOUND = re.compile(r"^error: target not found: (\S+)")
_PRINTED = re.compile(r"^(\S+) (\S+)$")
ARCHIVE_URL = "https://archive.archlinux.org/packages/"


class PacmanRepairer(ManifestRepairer):
    """Restores the files of pacman packages: `pacman -U` on the running system, the cached package
    file in an image."""

    manager = "pacman"
    saved_suffix = b".pacsave"

    def __init__(self, check: str, request):
        super().__init__(check, request)
        self.settings = read_settings(self.target)

    def read_packages(self, target: Target) -> Iterator[Union[Package, Damage]]:
        return localdb.read_packages(target, self.settings)

    def valid(self, package: Package) -> bool:
        return bool(
            localdb.NAME.match(package.name)
            and localdb.VERSION.match(package.version)
            and (not package.architecture or localdb.ARCH.match(package.architecture))
            and not package.name.startswith("-")
        )

    def reinstall_words(self, package: Package) -> str:
        return f"reinstall the package {package.name} inside the VM (pacman -S {package.name})"

    def cached(self, target: Target, package: Package) -> List[bytes]:
        return cache.candidates(target, self.settings.cachedirs, package)

    def archived(self, directory: Target, package: Package) -> List[bytes]:
        return cache.candidates(directory, [b"/"], package)

    def members(self, source: Target, path: bytes, package: Package) -> Iterator[Member]:
        return cache.package_members(source, path, package)

    def no_package_file(self, package: Package) -> str:
        names = cache.file_names(package)
        shown = names[0].decode("utf-8", "replace") if names else f"{package.name}-{package.version}"
        return (
            f"no package file of {self.label(package)} in the image's pacman cache or --archives: download "
            f"exactly that version ({shown}, from the Arch Linux Archive, {ARCHIVE_URL}) into a directory "
            "and give it with --archives DIR"
        )

    # -- the running system ------------------------------------------------------------------------

    def transaction(self, steps: Sequence[Step]) -> List[str]:
        files = [
            step.data.argument or f"{step.data.package.name}-{step.data.package.version}" for step in steps
        ]
        return ["pacman", "-U", "--noconfirm", "--", *files]

    def transaction_lines(self, steps: Sequence[Step]) -> List[str]:
        lines, files, fetch = [], [], []
        for step in steps:
            package = step.data.package
            found = self.cache_files(self.target, package, archives=True)
            if found:
                files.append(found[0][0].host_path(found[0][1]).decode("utf-8", "surrogateescape"))
                continue
            fetch.append(package.name)
            stem = f"{package.name}-{package.version}-{package.architecture or 'any'}.pkg.tar.*"
            files.append(
                f"{self.settings.cachedirs[0].decode('utf-8', 'surrogateescape').rstrip('/')}/{stem}"
            )
        if fetch:
            lines.append(
                f"$ {shlex.join(['pacman', '-Sw', '--noconfirm', '--nodeps', '--nodeps', '--', *fetch])}"
            )
            lines.append("(only when the repositories have exactly the installed versions)")
        lines.append(f"$ {shlex.join(['pacman', '-U', '--noconfirm', '--', *files])}")
        lines.append(
            "(each package file must be of exactly the installed version and hold the damaged files with the "
            "sha256 the local database records; pacman -Up must show that nothing else would be installed; "
            "what is still damaged afterwards is reinstalled once more)"
        )
        return lines

    def prepare(
        self, steps: List[Step], env: Dict[str, str], say
    ) -> Tuple[List[Step], List[Tuple[Step, str]]]:
        ready, refused, missing = [], [], []
        for step in steps:
            (ready if self._use_cached(step) else missing).append(step)
        if missing:
            fetched, why_not = self._download(missing, env, say)
            ready.extend(fetched)
            refused.extend(why_not)
        if not ready:
            return [], refused
        command = ["pacman", "-Up", "--print-format", "%n", "--", *[s.data.argument for s in ready]]
        status, output = run(command, env, timeout=QUERY_TIMEOUT)
        if status != 0:
            return [], refused + [(s, f"pacman cannot plan it: {tail(output)}") for s in ready]
        ours = {step.data.package.name for step in ready}
        others = [line.strip() for line in output.splitlines() if _is_name(line) and line.strip() not in ours]
        if others:
            why = f"not run: pacman would also install {', '.join(sorted(set(others))[:10])}"
            return [], refused + [(s, why) for s in ready]
        return ready, refused

    def _use_cached(self, step: Step) -> bool:
        """Whether a package file of exactly the installed version is at hand (pacman's cache, then
        --archives) and holds the damaged files with the database's sha256; it becomes the step's
        argument."""
        package = step.data.package
        for source, path in self.cache_files(self.target, package, archives=True):
            if self._holds_damaged_files(source, path, step):
                step.data.argument = source.host_path(path).decode("utf-8", "surrogateescape")
                return True
        return False

    def _holds_damaged_files(self, source: Target, path: bytes, step: Step) -> bool:
        expected = {o.entry.path: o.entry for o in step.data.paths if o.entry.kind == FILE and o.entry.digest}
        try:
            for member in self.members(source, path, step.data.package):
                entry = expected.get(member.path)
                if entry is None or member.fileobj is None:
                    continue
                digest = _digest(member, entry.algorithm)
                if not digest_matches(digest, entry.digest):
                    return False
                del expected[member.path]
        except (ArchiveError, OSError):
            return False
        return not expected

    def _download(self, steps: List[Step], env, say) -> Tuple[List[Step], List[Tuple[Step, str]]]:
        """Download into pacman's cache the package files the repositories have at exactly the
        installed version; (the steps that now have a package file, the refused ones with why)."""
        versions, unknown, problem = _repository_versions([s.data.package.name for s in steps], env)
        if problem:
            return [], [(s, f"pacman cannot look up the repositories: {problem}") for s in steps]
        fetch, refused = [], []
        for step in steps:
            package = step.data.package
            have = versions.get(package.name)
            if package.name in unknown or have is None:
                refused.append(
                    (step, f"the configured repositories do not have {package.name}: " + self._get(package))
                )
            elif have != package.version:
                refused.append(
                    (
                        step,
                        f"the configured repositories have {package.name} {have}, not the installed "
                        f"{package.version} (pacman -S would change its version): " + self._get(package),
                    )
                )
            else:
                fetch.append(step)
        if not fetch:
            return [], refused
        command = [
            "pacman",
            "-Sw",
            "--noconfirm",
            "--nodeps",
            "--nodeps",
            "--",
            *[s.data.package.name for s in fetch],
        ]
        say(f"downloading {len(fetch)} package file(s) of the installed versions: {shlex.join(command)}")
        status, output = run(command, env)
        ready = []
        for step in fetch:
            if self._use_cached(step):
                ready.append(step)
            else:
                said = f" (pacman exited with {status}: {tail(output)})" if status else ""
                refused.append(
                    (
                        step,
                        "no package file of the installed version that matches the database was "
                        f"downloaded{said}",
                    )
                )
        return ready, refused

    def _get(self, package: Package) -> str:
        names = cache.file_names(package)
        shown = names[0].decode("utf-8", "replace") if names else package.name
        return (
            f"put exactly that version ({shown}, from {ARCHIVE_URL}) into a directory and give it with "
            "--archives DIR"
        )


def _is_name(line: str) -> bool:
    return bool(localdb.NAME.match(line.strip()))


def _digest(member: Member, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    while True:
        chunk = member.fileobj.read(1 << 20)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def _repository_versions(names: List[str], env) -> Tuple[Dict[str, str], set, str]:
    """({name: version in the sync databases}, names they do not have, a problem or '')."""
    names = list(names)
    unknown: set = set()
    for _ in range(len(names) + 1):
        if not names:
            return {}, unknown, ""
        command = ["pacman", "-Sddp", "--print-format", "%n %v", "--", *names]
        status, output = run(command, env, timeout=QUERY_TIMEOUT)
        missing = {m.group(1) for m in map(_NOT_FOUND.match, output.splitlines()) if m}
        if missing:
            unknown |= missing
            names = [n for n in names if n not in missing]
            continue
        if status != 0:
            return {}, unknown, tail(output)
        versions = {}
        for line in output.splitlines():
            match = _PRINTED.match(line.strip())
            if match:
                versions[match.group(1)] = match.group(2)
        return versions, unknown, ""
    return {}, unknown, "pacman keeps naming packages it cannot find"
