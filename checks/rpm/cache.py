"""Package files left in the image's dnf/yum/zypper caches, as a second source of a package's manifest.

When a package's header in the database is damaged, the header the database recorded at install
time still names the digest of the package file's header (SHA256HEADER, outside the damaged region
as a rule). A cached `.rpm` whose header has that digest carries the very same manifest, so the
package's files can still be verified. Only the headers of cached packages are read, never payloads.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from typing import Dict, Iterator, Tuple

from fsaudit.target import Target
from fsaudit_checks.rpm.header import HEADER_MAGIC, MAX_BLOB, MAX_ENTRIES, Header, HeaderError

CACHE_DIRS = ("/var/cache/dnf", "/var/cache/yum", "/var/cache/libdnf5", "/var/cache/zypp/packages")
LEAD_MAGIC = b"\xed\xab\xee\xdb"
LEAD_SIZE = 96
MAX_PACKAGES = 20000
MAX_DEPTH = 6


def read_package_header(target: Target, path: bytes) -> bytes:
    """The main header of a `.rpm` file, magic included (the bytes its SHA256HEADER digests)."""
    with target.open(path) as handle:
        lead = handle.read(LEAD_SIZE)
        if len(lead) != LEAD_SIZE or not lead.startswith(LEAD_MAGIC):
            raise HeaderError("not an RPM package file")
        signature = _read_header(handle)
        padding = (-len(signature)) % 8
        handle.read(padding)
        return _read_header(handle)


def _read_header(handle) -> bytes:
    intro = handle.read(16)
    if len(intro) != 16 or intro[:3] != HEADER_MAGIC[:3]:
        raise HeaderError("header magic missing")
    il, dl = struct.unpack_from(">II", intro, 8)
    size = 16 * il + dl
    if not 1 <= il <= MAX_ENTRIES or size > MAX_BLOB:
        raise HeaderError(f"header claims {il} entries and {dl} bytes")
    rest = handle.read(size)
    if len(rest) != size:
        raise HeaderError("header cut short")
    return intro + rest


class PackageCache:
    """Cached package files of the image, indexed lazily by the digest of their header."""

    def __init__(self, target: Target, dirs=CACHE_DIRS):
        self.target = target
        self.dirs = dirs
        self._index: Dict[Tuple[str, str], bytes] | None = None

    def _files(self) -> Iterator[bytes]:
        """The package files of the cache directories, MAX_PACKAGES at most."""
        return itertools.islice(self._all_files(), MAX_PACKAGES)

    def _all_files(self) -> Iterator[bytes]:
        for top in self.dirs:
            if not self.target.exists(top, follow=True):
                continue
            for directory, entries in self.target.walk(top, max_depth=MAX_DEPTH):
                for entry in entries:
                    if entry.name.endswith(b".rpm") and entry.is_file(follow_symlinks=False):
                        yield directory.rstrip(b"/") + b"/" + entry.name

    def _build(self) -> Dict[Tuple[str, str], bytes]:
        index = {}
        for path in self._files():
            try:
                blob = read_package_header(self.target, path)
            except (OSError, HeaderError):
                continue
            for algorithm in ("sha256", "sha1"):
                index[(algorithm, hashlib.new(algorithm, blob).hexdigest())] = path
        return index

    def find(self, algorithm: str, digest: str) -> Tuple[bytes, Header] | None:
        """(path, header) of the cached package whose header has this digest, if any."""
        if self._index is None:
            self._index = self._build()
        path = self._index.get((algorithm, digest))
        if path is None:
            return None
        try:
            blob = read_package_header(self.target, path)
            if hashlib.new(algorithm, blob).hexdigest() != digest:
                return None
            return path, Header(blob[8:])
        except (OSError, HeaderError):
            return None

    @staticmethod
    def display(path: bytes) -> str:
        return os.fsdecode(path)
