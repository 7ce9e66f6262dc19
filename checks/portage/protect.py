"""Which files Portage treats as configuration files: `CONFIG_PROTECT` minus `CONFIG_PROTECT_MASK`,
stacked the way Portage stacks incremental variables (env.d's `/etc/profile.env`, then
`make.globals`, the profile's `make.defaults` from its parents down, then `make.conf`; `-*` clears
what came before, `-PATH` removes one entry). A path is protected when its longest matching
`CONFIG_PROTECT` entry is longer than its longest matching mask entry."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Set

from fsaudit.target import Target

KEYS = ("CONFIG_PROTECT", "CONFIG_PROTECT_MASK")
DEFAULTS = {"CONFIG_PROTECT": ["/etc"], "CONFIG_PROTECT_MASK": ["/etc/env.d"]}
FILE_LIMIT = 1 << 20
MAX_PROFILES = 256
MAX_DEPTH = 32
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?(CONFIG_PROTECT(?:_MASK)?)=(.*)$")


@dataclass
class ConfigProtect:
    protect: List[str] = field(default_factory=lambda: list(DEFAULTS["CONFIG_PROTECT"]))
    mask: List[str] = field(default_factory=lambda: list(DEFAULTS["CONFIG_PROTECT_MASK"]))

    def is_protected(self, path: bytes) -> bool:
        text = path.decode("utf-8", "surrogateescape")
        return _longest(self.protect, text) > _longest(self.mask, text)


def _longest(entries: List[str], path: str) -> int:
    best = 0
    for entry in entries:
        entry = entry.rstrip("/") or "/"
        if path == entry or path.startswith(entry + "/") or entry == "/":
            best = max(best, len(entry))
    return best


def _value(raw: str, lines: Iterator[str]) -> str:
    """The value of an assignment whose text starts with `raw`, quotes removed, continued over
    following lines while a quote is open."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        text = raw[1:]
        while quote not in text:
            try:
                text += " " + next(lines)
            except StopIteration:
                break
        return text.split(quote, 1)[0]
    return raw.split("#", 1)[0]


def assignments(text: str) -> Dict[str, List[str]]:
    """The CONFIG_PROTECT and CONFIG_PROTECT_MASK tokens a shell-like file assigns (the last
    assignment of each wins; references to the variables themselves are dropped: incremental
    stacking already keeps what came before)."""
    found: Dict[str, List[str]] = {}
    lines = iter(text.splitlines())
    for line in lines:
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        value = _value(match.group(2), lines)
        tokens = [t for t in value.split() if not t.startswith("$")]
        found[match.group(1)] = tokens
    return found


def _stack(values: Dict[str, List[str]], layer: Dict[str, List[str]]) -> None:
    for key, tokens in layer.items():
        current = values[key]
        for token in tokens:
            if token == "-*":
                current.clear()
            elif token.startswith("-"):
                while token[1:] in current:
                    current.remove(token[1:])
            elif token not in current:
                current.append(token)


def _read(target: Target, path: str) -> str:
    try:
        return target.read_bytes(path, limit=FILE_LIMIT).decode("utf-8", "replace")
    except OSError:
        return ""


def _profiles(target: Target) -> List[str]:
    """The profile directories (inside the root), parents before children."""
    try:
        start = target.inner_path(target.resolve("/etc/portage/make.profile")).decode("utf-8", "replace")
    except OSError:
        return []
    ordered: List[str] = []
    seen: Set[str] = set()

    def visit(directory: str, depth: int) -> None:
        if directory in seen or depth > MAX_DEPTH or len(seen) >= MAX_PROFILES:
            return
        seen.add(directory)
        for line in _read(target, directory + "/parent").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and ":" not in line:
                visit(posixpath.normpath(posixpath.join(directory, line)), depth + 1)
        ordered.append(directory)

    visit(start, 0)
    return ordered


def _make_conf(target: Target) -> List[str]:
    texts = []
    for path in ("/etc/make.conf", "/etc/portage/make.conf"):
        try:
            names = sorted(target.listdir(path))
        except OSError:
            texts.append(_read(target, path))
            continue
        texts.extend(_read(target, f"{path}/{name.decode('utf-8', 'replace')}") for name in names[:256])
    return texts


def read_config_protect(target: Target) -> ConfigProtect:
    """The audited system's CONFIG_PROTECT and CONFIG_PROTECT_MASK."""
    layers = [_read(target, "/etc/profile.env"), _read(target, "/usr/share/portage/config/make.globals")]
    layers += [_read(target, f"{directory}/make.defaults") for directory in _profiles(target)]
    layers += _make_conf(target)
    values: Dict[str, List[str]] = {key: [] for key in KEYS}
    for text in layers:
        _stack(values, assignments(text))
    result = ConfigProtect()
    if values["CONFIG_PROTECT"]:
        result.protect = values["CONFIG_PROTECT"]
    if values["CONFIG_PROTECT_MASK"] or values["CONFIG_PROTECT"]:
        result.mask = values["CONFIG_PROTECT_MASK"]
    return result
