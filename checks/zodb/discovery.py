"""Finding FileStorages on the audited system: by their magic, and from ZEO/Zope/buildout configs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List

from fsaudit.target import Target
from fsaudit_checks.zodb.format import MAGICS

CONFIG_NAMES = (b"zeo.conf", b"zope.conf")
# Trees that never hold a FileStorage but do hold very many files.
_PRUNE_NAMES = {b".git", b".hg", b".svn", b"node_modules", b"__pycache__", b".cache", b"proc", b"sys"}
# Python environments hold libraries, not an application's database: ZODB itself ships a FileStorage
# for its tests (ZODB/scripts/manual_tests/test-checker.fs), which is no customer's data.
_LIBRARY_NAMES = {b"site-packages", b"dist-packages"}
_PRUNE_PATHS = {
    b"/var/lib/dpkg",
    b"/var/lib/apt",
    b"/var/lib/docker",
    b"/var/lib/containerd",
    b"/var/lib/postgresql",
    b"/var/lib/mysql",
    b"/var/lib/snapd",
    b"/var/lib/flatpak",
    b"/var/lib/rpm",
}
_DEFINE = re.compile(r"^%define\s+(\S+)\s*(.*)$", re.I)
_OPEN = re.compile(r"^<\s*([A-Za-z0-9_.-]+)[^>]*>$")
_CLOSE = re.compile(r"^</\s*([A-Za-z0-9_.-]+)\s*>$")
_VARIABLE = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)(?(1)\})")


@dataclass
class Storage:
    """A FileStorage to audit: its path inside the target and its blob directory, if known."""

    path: bytes
    blob_dir: bytes | None = None
    sources: List[str] = field(default_factory=list)


@dataclass
class Discovery:
    storages: Dict[bytes, Storage] = field(default_factory=dict)
    files_examined: int = 0
    unreadable_dirs: int = 0
    limit_reached: bool = False
    library_dirs: int = 0  # Python library directories left out of the search
    too_deep: int = 0  # directories below max_depth, not searched

    def add(self, path: bytes, blob_dir: bytes | None, source: str) -> None:
        path = os.path.normpath(path)
        storage = self.storages.setdefault(path, Storage(path))
        if blob_dir and not storage.blob_dir:
            storage.blob_dir = os.path.normpath(blob_dir)
        if source not in storage.sources:
            storage.sources.append(source)


def looks_like_storage(target: Target, path: bytes, name: bytes) -> bool:
    """A FileStorage by its magic; or, for `Data.fs` and for `.fs` files whose first transaction
    header is plausible, one whose magic was damaged (an F# source named `x.fs` is neither)."""
    try:
        head = target.read_bytes(path, limit=4 + 23)
    except OSError:
        return name.endswith(b".fs")
    if head[:4] in MAGICS:
        return True
    if name == b"Data.fs":
        return True
    if not name.endswith(b".fs") or len(head) < 27:
        return False
    # Byte 0 of a tid counts 2^24 minutes since 1900: 3..5 covers 1932 to 2159.
    return head[4] in (3, 4, 5) and head[12:15] == b"\0\0\0" and head[20:21] in (b" ", b"p", b"u")


def parse_config(text: str, config_dir: bytes) -> List[Storage]:
    """The `<filestorage>` paths (and their blob directories) a ZConfig file (zeo.conf, zope.conf,
    buildout parts/*/etc/*.conf) declares, with `%define` variables substituted."""
    defines: Dict[str, str] = {}
    stack: List[dict] = []
    found: List[Storage] = []

    def substitute(value: str) -> str:
        return _VARIABLE.sub(lambda match: defines.get(match.group(2).lower(), match.group(0)), value)

    def absolute(value: str) -> bytes:
        raw = os.fsencode(substitute(value.strip()))
        return raw if raw.startswith(b"/") else os.path.join(config_dir, raw)

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        define = _DEFINE.match(line)
        if define:
            defines[define.group(1).lower()] = substitute(define.group(2).strip())
            continue
        close = _CLOSE.match(line)
        if close:
            if stack:
                section = stack.pop()
                if section["type"] == "filestorage" and section.get("path"):
                    blob_dir = section.get("blob-dir") or next(
                        (
                            outer.get("blob-dir")
                            for outer in reversed(stack)
                            if outer["type"] == "blobstorage"
                        ),
                        None,
                    )
                    found.append(Storage(section["path"], blob_dir))
            continue
        opened = _OPEN.match(line)
        if opened:
            stack.append({"type": opened.group(1).lower()})
            continue
        if not stack:
            continue
        key, _, value = line.partition(" ")
        key = key.lower()
        if key in ("path", "blob-dir") and value.strip():
            stack[-1][key] = absolute(value)
    return found


def _is_buildout_config(inner: bytes) -> bool:
    parts = inner.split(b"/")
    return len(parts) >= 4 and parts[-2] == b"etc" and parts[-4] == b"parts" and inner.endswith(b".conf")


def guess_blob_dir(target: Target, path: bytes) -> bytes | None:
    """The blob directory next to a Data.fs when its layout is the usual one (`blobs/` beside it, or
    buildout's `var/blobstorage` beside `var/filestorage/`)."""
    directory = os.path.dirname(path)
    for candidate in (
        os.path.join(directory, b"blobs"),
        os.path.join(directory, b"blobstorage"),
        os.path.join(os.path.dirname(directory), b"blobstorage"),
    ):
        if target.exists(os.path.join(candidate, b".layout"), follow=True):
            return candidate
    return None


def blob_layout(target: Target, blob_dir: bytes) -> str:
    """The layout of a blob directory as ZODB.blob.auto_layout_select chooses it: the `.layout`
    marker, else `bushy` for an unused directory and `lawn` (the old layout) for a used one."""
    try:
        marker = target.read_bytes(os.path.join(blob_dir, b".layout"), limit=64)
        return marker.decode("ascii", "replace").strip() or "bushy"
    except OSError:
        pass
    try:
        used = any(not name.startswith(b".") for name in target.listdir(blob_dir))
        return "lawn" if used else "bushy"
    except OSError:
        return "bushy"


def _examine(target: Target, found: Discovery, configs: List[bytes], directory: bytes, entry, max_files: int):
    """One entry of the search: a config to read later, a FileStorage by its magic, or nothing."""
    try:
        if not entry.is_file(follow_symlinks=False):
            return
        size = entry.stat(follow_symlinks=False).st_size
    except OSError:
        return
    inner = os.path.join(directory, entry.name)
    if entry.name in CONFIG_NAMES or _is_buildout_config(inner):
        configs.append(inner)
    if size < 4 or entry.name.endswith((b".index", b".lock", b".tmp", b".tr0")):
        return
    if found.files_examined >= max_files:
        found.limit_reached = True
        return
    found.files_examined += 1
    if looks_like_storage(target, inner, entry.name):
        found.add(inner, None, "search")


def discover(
    target: Target, roots: Iterable[str], config_roots: Iterable[str], max_depth: int, max_files: int
) -> Discovery:
    """Every FileStorage below `roots` (by magic or `.fs` name) and every one the ZEO/Zope configs
    below `roots` and `config_roots` name."""
    found = Discovery()
    configs: List[bytes] = []

    def onerror(path, error):
        found.unreadable_dirs += 1

    def prune(path: bytes, entry) -> bool:
        if entry.name in _PRUNE_NAMES or path in _PRUNE_PATHS:
            return True
        if entry.name in _LIBRARY_NAMES:
            found.library_dirs += 1
            return True
        if path.count(b"/") - depth_of_root[0] > max_depth:
            found.too_deep += 1
            return True
        # A blob directory has one directory per oid byte and no FileStorage.
        return os.path.exists(os.path.join(entry.path, b".layout"))

    depth_of_root = [0]
    for root in roots:
        if not target.exists(root, follow=True):
            continue
        start = target.inner_path(target.resolve(root))
        depth_of_root[0] = start.rstrip(b"/").count(b"/")
        for directory, entries in target.walk(start, onerror=onerror, prune=prune, max_depth=max_depth + 1):
            for entry in entries:
                _examine(target, found, configs, directory, entry, max_files)
    for root in config_roots:
        if not target.exists(root, follow=True):
            continue
        for directory, entries in target.walk(os.fsencode(root), onerror=onerror, max_depth=4):
            configs.extend(
                os.path.join(directory, entry.name) for entry in entries if entry.name in CONFIG_NAMES
            )
    for config in configs:
        try:
            text = target.read_text(config, limit=1 << 20)
        except OSError:
            continue
        for storage in parse_config(text, os.path.dirname(config)):
            found.add(storage.path, storage.blob_dir, f"config {os.fsdecode(config)}")
    return found
