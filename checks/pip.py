"""Checker `pip`: Python environments verified against their installed distributions' RECORD files."""

from __future__ import annotations

import base64
import binascii
import csv
import fnmatch
import hashlib
import io
import os
import posixpath
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from fsaudit.checker import Checker, Option, Skip
from fsaudit.hashing import HashRequest, hash_files
from fsaudit.outcomes import (
    ANOMALY_CODES,
    CONTENT_DIFFERS,
    OK,
    PERMISSION_DENIED,
    is_permission_denied,
    not_checked_for_permission,
    outcome,
    unverified_finding,
)
from fsaudit.target import Target

# Where virtualenvs usually live, searched when no paths are given (system sites are found apart).
DEFAULT_PATHS = ("/opt", "/srv", "/home", "/var/www", "/root", "/usr/local")
SYSTEM_SITES = ("/usr/lib/python3*", "/usr/lib64/python3*", "/usr/local/lib/python3*")
SEARCH_DEPTH = 6
# Directories never searched for environments: big, and never holding one.
PRUNE = {b"node_modules", b".git", b"__pycache__", b"site-packages", b"dist-packages", b"proc", b".cache"}
RECORD_LIMIT = 64 << 20


@dataclass
class Distribution:
    """One installed distribution: its dist-info directory inside its site-packages."""

    site: bytes
    dist_info: bytes
    environment: bytes
    system: bool = False

    @property
    def name_version(self) -> Tuple[str, str]:
        stem = os.fsdecode(posixpath.basename(self.dist_info))[: -len(".dist-info")]
        name, _, version = stem.rpartition("-")
        return (name or stem), version


def parse_record_hash(text: str) -> Optional[Tuple[str, str]]:
    """`sha256=<urlsafe base64>` as (hashlib name, hex digest); None when absent or malformed."""
    algorithm, sep, encoded = text.partition("=")
    if not sep or algorithm not in hashlib.algorithms_guaranteed:
        return None
    size = hashlib.new(algorithm).digest_size
    # The wheel spec says urlsafe base64; some distributors write hex digests instead.
    if len(encoded) == 2 * size and all(c in "0123456789abcdefABCDEF" for c in encoded):
        return algorithm, encoded.lower()
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != size:
        return None
    return algorithm, raw.hex()


class PipChecker(Checker):
    """Python environments: every installed file against its distribution's RECORD hash and size."""

    name = "pip"
    covers = "Python packages"
    category = "applications"
    self_check = True
    options = (
        Option("paths", "Directories to search for environments (default: the usual places)", multiple=True),
    )
    codes = {
        "missing": "a file the distribution installed is gone",
        "content-differs": "a file's size or SHA-256 differs from what RECORD says was installed",
        "wrong-type": "something other than a regular file stands where an installed file belongs",
        "unreadable": "an installed file could not be read (I/O error or permission)",
        **ANOMALY_CODES,
        "record-damaged": "a RECORD file is unreadable or has malformed lines; those files are not verified",
    }

    def applies(self, target: Target) -> bool:
        if not any(True for _ in self._sites(target)):
            raise Skip("no Python environment with installed distributions found")
        return True

    def _search_roots(self) -> List[str]:
        return self.settings["paths"] or list(DEFAULT_PATHS)

    def _sites(self, target: Target) -> Iterator[Tuple[bytes, bytes, bool]]:
        """(environment, site-packages, is a system site) for system sites and every virtualenv."""
        seen = set()
        candidates = [] if self.settings["paths"] else [(*pair, True) for pair in self._system_sites(target)]
        candidates += [(*pair, False) for pair in self._virtualenv_sites(target)]
        for environment, site, system in candidates:
            key = target.resolve(site)
            if key not in seen:
                seen.add(key)
                yield environment, site, system

    def _system_sites(self, target: Target) -> List[Tuple[bytes, bytes]]:
        found = []
        for pattern in SYSTEM_SITES:
            parent, _, glob = pattern.rpartition("/")
            try:
                names = sorted(target.listdir(parent))
            except OSError:
                continue
            for name in names:
                if not fnmatch.fnmatch(os.fsdecode(name), glob):
                    continue
                base = os.fsencode(parent) + b"/" + name
                for leaf in (b"site-packages", b"dist-packages"):
                    if target.exists(base + b"/" + leaf, follow=True):
                        found.append((base, base + b"/" + leaf))
        return found

    def _virtualenv_sites(self, target: Target) -> Iterator[Tuple[bytes, bytes]]:
        def prune(path: bytes, entry) -> bool:
            return entry.name in PRUNE

        for top in self._search_roots():
            if not target.exists(top, follow=True):
                continue
            for directory, entries in target.walk(
                top, prune=prune, onerror=lambda path, error: None, max_depth=SEARCH_DEPTH
            ):
                if any(e.name == b"pyvenv.cfg" for e in entries):
                    yield from _venv_sites(target, directory)

    def _distributions(self, target: Target, environment: bytes, site: bytes, system: bool) -> Iterator:
        try:
            names = sorted(target.listdir(site))
        except OSError:
            return
        for name in names:
            if name.endswith(b".dist-info"):
                yield Distribution(site, site + b"/" + name, environment, system)

    def _os_managed(self, target: Target, dist: Distribution) -> bool:
        """Installed into a system site by the OS package manager (no INSTALLER file): its files are
        the package manager's, verified by `debian` or `rpm`, and may be legitimately changed from
        the wheel (stripped libraries, system certificates)."""
        return dist.system and not target.exists(dist.dist_info + b"/INSTALLER")

    def run(self, target: Target) -> Iterator:
        for environment, site, system in self._sites(target):
            self.count("environments")
            for dist in self._distributions(target, environment, site, system):
                if self._os_managed(target, dist):
                    self.count("distributions_os_managed")
                    continue
                yield from self._verify(target, dist)

    def _records(self, target: Target, dist: Distribution, problems: list) -> Iterator[HashRequest]:
        record = dist.dist_info + b"/RECORD"
        try:
            text = target.read_bytes(record, limit=RECORD_LIMIT).decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            self.count("distributions_without_record")
            return
        except OSError as error:
            if is_permission_denied(error):
                not_checked_for_permission(self)
            else:
                problems.append((record, f"cannot read RECORD: {error.strerror or error}"))
            return
        self.count("distributions")
        for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row:
                continue
            if len(row) != 3:
                problems.append((record, f"line {number} has {len(row)} fields instead of 3"))
                continue
            relative, hash_text, size_text = row
            if not hash_text:
                self.count("entries_without_hash")
                continue
            parsed = parse_record_hash(hash_text)
            if parsed is None or (size_text and not size_text.isdigit()):
                problems.append((record, f"line {number} has a malformed hash or size"))
                continue
            path = posixpath.normpath(
                os.fsencode(relative) if relative.startswith("/") else site_join(dist.site, relative)
            )
            yield HashRequest(
                path=path,
                algorithm=parsed[0],
                expected_size=int(size_text) if size_text else None,
                key=parsed[1],
                follow=False,
            )

    def _verify(self, target: Target, dist: Distribution) -> Iterator:
        name, version = dist.name_version
        env_text = target.display(dist.environment)
        subject = f"{name} {version}"
        advice = (
            f"reinstall {name} {version} into the environment {env_text} "
            f"(pip install --force-reinstall --no-deps '{name}=={version}' with that environment's pip)"
        )
        problems: list = []
        for result in hash_files(target, self._records(target, dist, problems), self.context, self.stats):
            verdict = outcome(result, result.request.key)
            path = result.request.path
            details = {"distribution": name, "version": version, "environment": env_text}
            if verdict == OK:
                self.count("files_verified")
                self.context.verified.add(path)
                continue
            if verdict == CONTENT_DIFFERS:
                self.count("files_verified")
                details.update(expected_size=result.request.expected_size, actual_size=result.size)
                if not result.size_differs:
                    details.update(expected_digest=result.request.key, actual_digest=result.digest)
                yield self.finding(
                    "content-differs",
                    "critical",
                    "content differs from what was installed",
                    path=path,
                    subject=subject,
                    details=details,
                    advice=_rebuild_advice(path) or advice,
                )
            elif verdict == PERMISSION_DENIED:
                not_checked_for_permission(self)
            else:
                yield unverified_finding(
                    self, verdict, result, path, advice, "installed file", subject=subject, details=details
                )
        for record, problem in problems:
            self.count("records_damaged")
            self.incomplete("some RECORD files could not be read in full")
            yield self.finding(
                "record-damaged",
                "critical",
                f"RECORD is damaged: {problem}",
                path=record,
                subject=subject,
                details={"distribution": name, "version": version},
                advice=advice,
            )


def site_join(site: bytes, relative: str) -> bytes:
    return site + b"/" + os.fsencode(relative)


def _rebuild_advice(path: bytes) -> str:
    if path.endswith(b".pyc") and b"/__pycache__/" in path:
        return "delete this cached bytecode file; Python rebuilds it from the source"
    return ""


def _venv_sites(target: Target, directory: bytes) -> Iterator[Tuple[bytes, bytes]]:
    """(the environment, each site-packages) of the virtualenv at `directory`."""
    for lib in (b"lib", b"lib64"):
        try:
            versions = target.listdir(directory + b"/" + lib)
        except OSError:
            continue
        for version in sorted(versions):
            site = directory + b"/" + lib + b"/" + version + b"/site-packages"
            if version.startswith(b"python") and target.exists(site, follow=True):
                yield directory, site
