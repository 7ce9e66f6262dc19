"""Where dpkg puts a packaged file other than where its package says: diversions
(/var/lib/dpkg/diversions) and the administrator's path-exclude/path-include filters (dpkg.cfg)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from fsaudit.target import Target
from fsaudit_checks.debian.dpkg_db import (
    CONFIG_DIR,
    CONFIG_FILE,
    DIVERSIONS,
    MAX_CONFIG,
    MAX_LIST,
    Damage,
    Lines,
)

MAX_DIVERSIONS = 100_000


# -- diversions --------------------------------------------------------------------------------


@dataclass
class Diversion:
    source: bytes
    to: bytes
    package: str  # ":" for a local diversion made by the administrator


def read_diversions(target: Target) -> Tuple[Dict[bytes, Diversion], List[Damage]]:
    try:
        lines = Lines(target, DIVERSIONS, MAX_LIST)
    except FileNotFoundError:
        return {}, []
    damage = []
    diversions = {}
    group: List[bytes] = []
    count = 0
    try:
        for number, line in lines:
            count = number
            group.append(line)
            if len(group) < 3:
                continue
            source, to, package = group
            group = []
            if len(diversions) >= MAX_DIVERSIONS:
                damage.append(
                    Damage(DIVERSIONS, f"more than {MAX_DIVERSIONS:,} diversions: the rest was not read")
                )
                return diversions, damage
            if not source.startswith(b"/") or not to.startswith(b"/") or not package:
                damage.append(Damage(DIVERSIONS, "a malformed diversion", number - 2))
                continue
            diversions[source] = Diversion(source, to, package.decode("utf-8", "surrogateescape"))
    except OSError as error:
        damage.append(Damage(DIVERSIONS, f"reading stopped: {error.strerror or error}"))
    if count % 3:
        damage.append(Damage(DIVERSIONS, "the number of lines is not a multiple of 3: it is damaged"))
    return diversions, damage + lines.damage()


def diverted_location(path: bytes, owner: str, diversions: Dict[bytes, Diversion]) -> bytes:
    """Where the file `path` of package `owner` lives: diverted away unless `owner` made the diversion."""
    diversion = diversions.get(path)
    if diversion is None or diversion.package == owner:
        return path
    return diversion.to


# -- dpkg path filters (path-exclude / path-include) ---------------------------------------------


class PathFilter:
    """dpkg's `path-exclude=`/`path-include=` rules: the last matching rule decides (dpkg(1))."""

    def __init__(self, rules: List[Tuple[bool, bytes]]):
        self.rules = rules

    def excluded(self, path: bytes) -> bool:
        verdict = False
        for exclude, pattern in self.rules:
            if fnmatch.fnmatchcase(path, pattern):
                verdict = exclude
        return verdict

    def __bool__(self) -> bool:
        return bool(self.rules)


def read_path_filter(target: Target) -> PathFilter:
    files = [CONFIG_FILE]
    try:
        names = sorted(target.listdir(CONFIG_DIR))
    except OSError:
        names = []
    # dpkg reads the directory's files in order, skipping editor backups and dotfiles.
    files += [CONFIG_DIR + b"/" + n for n in names if re.match(rb"^[0-9A-Za-z_-]+$", n)]
    rules: List[Tuple[bool, bytes]] = []
    for path in files:
        try:
            text = target.read_bytes(path, limit=MAX_CONFIG)
        except OSError:
            continue
        for line in text.split(b"\n"):
            line = line.strip()
            match = re.match(rb"^(?:--)?(path-exclude|path-include)(?:\s*=\s*|\s+)(\S.*)$", line)
            if match:
                rules.append((match.group(1) == b"path-exclude", match.group(2).strip()))
    return PathFilter(rules)
