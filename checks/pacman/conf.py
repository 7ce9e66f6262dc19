"""The settings of the audited system's `/etc/pacman.conf` that change what verifying means: where
the database and the package cache are, and which files pacman was told not to install
(`NoExtract`) or not to overwrite (`NoUpgrade`, which makes them configuration files)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import List

from fsaudit.target import Target

CONF = b"/etc/pacman.conf"
DEFAULT_DBPATH = b"/var/lib/pacman"
DEFAULT_CACHEDIR = b"/var/cache/pacman/pkg"
CONF_LIMIT = 1 << 20
MAX_PATTERNS = 10_000


@dataclass
class Settings:
    dbpath: bytes = DEFAULT_DBPATH
    cachedirs: List[bytes] = field(default_factory=list)
    noextract: List[bytes] = field(default_factory=list)
    noupgrade: List[bytes] = field(default_factory=list)

    def is_noextract(self, path: bytes) -> bool:
        return _matches(self.noextract, path)

    def is_noupgrade(self, path: bytes) -> bool:
        return _matches(self.noupgrade, path)


def _matches(patterns: List[bytes], path: bytes) -> bool:
    """pacman's rule: the last pattern that matches the path (without its leading slash) decides;
    a `!pattern` that matches says no."""
    relative = path.lstrip(b"/")
    for pattern in reversed(patterns):
        inverted = pattern.startswith(b"!")
        if inverted or pattern.startswith(b"\\"):
            pattern = pattern[1:]
        if fnmatch.fnmatchcase(relative, pattern):
            return not inverted
    return False


def read_settings(target: Target) -> Settings:
    """The options section of the root's pacman.conf (defaults when it cannot be read; `Include`d
    files are not followed: they hold repositories, not these options)."""
    settings = Settings()
    try:
        text = target.read_bytes(CONF, limit=CONF_LIMIT)
    except OSError:
        text = b""
    section = b""
    for raw in text.splitlines():
        line = raw.split(b"#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(b"[") and line.endswith(b"]"):
            section = line[1:-1].strip()
            continue
        if section != b"options":
            continue
        key, _, value = line.partition(b"=")
        key, value = key.strip(), value.strip()
        if key == b"DBPath" and value.startswith(b"/"):
            settings.dbpath = value.rstrip(b"/") or b"/"
        elif key == b"CacheDir" and value.startswith(b"/"):
            settings.cachedirs.extend(value.split())
        elif key in (b"NoExtract", b"NoUpgrade"):
            patterns = settings.noextract if key == b"NoExtract" else settings.noupgrade
            if len(patterns) < MAX_PATTERNS:
                patterns.extend(value.split())
    if not settings.cachedirs:
        settings.cachedirs = [DEFAULT_CACHEDIR]
    return settings
