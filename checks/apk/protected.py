"""apk's protected paths: which installed files are configuration files an administrator may edit.

apk starts from `+etc`, `@etc/init.d` and `!etc/apk`, then reads every `*.list` file of
`/etc/apk/protected_paths.d` in name order. Each line is a mode and a glob relative to the root:
`+` protected when changed (configuration), `!` protected always, `@` only symlinks, `-` not
protected. A rule decides for the path it matches and everything below it; a rule that matches
deeper wins, and among rules matching at the same depth the later one wins."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import List, Tuple

from fsaudit.target import Target

DIRECTORY = b"/etc/apk/protected_paths.d"
DEFAULT_RULES = (b"+etc", b"@etc/init.d", b"!etc/apk")
FILE_LIMIT = 1 << 20
MAX_RULES = 10_000
MAX_FILES = 256
CHANGED, ALWAYS, SYMLINKS, NONE = "changed", "always", "symlinks", "none"
_MODES = {b"+": CHANGED, b"!": ALWAYS, b"@": SYMLINKS, b"-": NONE}


@dataclass
class ProtectedPaths:
    rules: List[Tuple[Tuple[bytes, ...], str]] = field(default_factory=list)

    def add(self, line: bytes) -> None:
        line = line.strip()
        if not line or line.startswith(b"#") or len(self.rules) >= MAX_RULES:
            return
        mode = _MODES.get(line[:1])
        if mode is None:
            mode = CHANGED
        else:
            line = line[1:]
        parts = tuple(part for part in line.strip(b"/").split(b"/") if part)
        if parts:
            self.rules.append((parts, mode))

    def mode(self, path: bytes) -> str:
        """How apk protects `path` (absolute, inside the root)."""
        parts = [part for part in path.split(b"/") if part]
        result = NONE
        for depth in range(1, len(parts) + 1):
            for pattern, mode in self.rules:
                if len(pattern) == depth and all(
                    fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, pattern)
                ):
                    result = mode
        return result

    def is_config(self, path: bytes) -> bool:
        """A configuration file: changes to it are the administrator's until shown otherwise."""
        return self.mode(path) in (CHANGED, ALWAYS)


def read_protected_paths(target: Target) -> ProtectedPaths:
    protected = ProtectedPaths()
    for rule in DEFAULT_RULES:
        protected.add(rule)
    try:
        names = sorted(target.listdir(DIRECTORY))
    except OSError:
        names = []
    for name in [n for n in names if n.endswith(b".list") and not n.startswith(b".")][:MAX_FILES]:
        try:
            text = target.read_bytes(DIRECTORY + b"/" + name, limit=FILE_LIMIT)
        except OSError:
            continue
        for line in text.splitlines():
            protected.add(line)
    return protected
