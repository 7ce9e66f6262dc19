"""What kind of damage a changed package file shows: compare its bytes with the packaged ones.

Lost writes leave typical traces: a file cut short (its size was written, its data not), 4 KiB blocks
of zeros (allocated but never written), or the whole content of the previous version (an update that
never reached the disk). Naming the trace helps the owner judge the incident.
"""

from __future__ import annotations

import stat
from typing import IO, Dict, List, Optional, Tuple

from fsaudit.target import Target
from fsaudit_checks.debian.dpkg_db import Package

BLOCK = 4096
_CHUNK = 256 * BLOCK
_ZERO = bytes(BLOCK)
# Bytes of a damaged file read for evidence when no packaged copy is at hand: enough for any
# packaged file that matters, and a bound on what a tenant's 10 GB file can cost.
EVIDENCE_LIMIT = 64 << 20


def _read_full(handle: IO[bytes], size: int) -> bytes:
    parts = []
    while size > 0:
        chunk = handle.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def compare(
    actual: IO[bytes], packaged: IO[bytes], actual_size: int, packaged_size: int
) -> Dict[str, object]:
    """Compare a damaged file with the packaged member, 4 KiB block by block.

    classification: `truncated` (the file is a proper prefix of the packaged one), `zero-filled`
    (every differing block of the file is zeros), `random` (anything else); plus counts. The file is
    read no further than the packaged member: what lies beyond it only differs
    (`bytes_beyond_packaged`).
    """
    differing = zero = 0
    first: int | None = None
    offset = 0
    while True:
        theirs = _read_full(packaged, _CHUNK)
        mine = _read_full(actual, len(theirs))
        if not mine and not theirs:
            break
        for start in range(0, max(len(mine), len(theirs)), BLOCK):
            a = mine[start : start + BLOCK]
            b = theirs[start : start + BLOCK]
            if a == b or not a or (len(a) < len(b) and b.startswith(a)):
                # Equal, or beyond the end of a shorter file: not a differing block of the file.
                continue
            differing += 1
            zero += a.count(0) == len(a)
            first = offset + start if first is None else first
        offset += max(len(mine), len(theirs))
        if len(mine) < _CHUNK and len(theirs) < _CHUNK:
            break
    beyond = actual_size - max(offset, packaged_size)
    if beyond > 0:
        differing += -(-beyond // BLOCK)
        first = max(offset, packaged_size) if first is None else first
    if actual_size < packaged_size and differing == 0:
        classification = "truncated"
    elif differing and zero == differing and actual_size == packaged_size:
        classification = "zero-filled"
    else:
        classification = "random"
    result: Dict[str, object] = {"classification": classification, "differing_blocks": differing}
    if zero:
        result["zero_blocks"] = zero
    if first is not None:
        result["first_difference"] = first
    if beyond > 0:
        result["bytes_beyond_packaged"] = beyond
    return result


def evidence(actual: IO[bytes], size: int) -> Dict[str, object]:
    """What the file alone shows when no packaged copy is at hand: empty, or aligned zero blocks
    (counted in the first EVIDENCE_LIMIT bytes; `evidence_bytes` says when that was not all)."""
    if size == 0:
        return {"classification": "empty"}
    zero = read = 0
    while read < EVIDENCE_LIMIT:
        chunk = _read_full(actual, min(_CHUNK, EVIDENCE_LIMIT - read))
        if not chunk:
            break
        read += len(chunk)
        for start in range(0, len(chunk) - BLOCK + 1, BLOCK):
            if chunk[start : start + BLOCK] == _ZERO:
                zero += 1
        if len(chunk) < _CHUNK:
            break
    result: Dict[str, object] = {"classification": "unknown"}
    if zero:
        result["zero_blocks"] = zero
    if size > read >= EVIDENCE_LIMIT:
        result["evidence_bytes"] = read
    return result


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]):
        import hashlib

        self.raw = raw
        self.digest = hashlib.md5()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


class AptCache:
    """The .deb files in the audited system's apt cache, used to classify damaged files."""

    def __init__(self, target: Target):
        self.target = target
        self._names: Optional[List[bytes]] = None

    def deb(self, package: Package) -> Optional[bytes]:
        """The cached .deb of the installed version of `package`, if any."""
        from fsaudit_checks.debian import debfile  # reading .deb files: only for damage

        path = (
            debfile.ARCHIVES + b"/" + debfile.cache_name(package.name, package.version, package.architecture)
        )
        try:
            if stat.S_ISREG(self.target.stat(path).st_mode):
                return path
        except OSError:
            pass
        return None

    def older(self, package: Package) -> List[Tuple[str, bytes]]:
        """(version, path) of cached .deb files of older versions of `package`, newest first."""
        from debian.debian_support import Version

        from fsaudit_checks.debian import debfile  # reading .deb files: only for damage

        if self._names is None:
            try:
                self._names = sorted(self.target.listdir(debfile.ARCHIVES))
            except OSError:
                self._names = []
        older = []
        for filename in self._names:
            parsed = debfile.parse_cache_name(filename)
            if not parsed or parsed[0] != package.name or parsed[2] != package.architecture:
                continue
            try:
                if Version(parsed[1]) < Version(package.version):
                    older.append((Version(parsed[1]), parsed[1], debfile.ARCHIVES + b"/" + filename))
            except ValueError:
                continue
        return [(text, path) for _, text, path in sorted(older, reverse=True)]

    def classify(self, package: Package, wanted: Dict[bytes, Tuple[bytes, dict]]) -> None:
        """Add `classification` (and its evidence) to the details of each damaged file of `package`:
        packaged path -> (where the file lives, its finding's details with `actual_md5`)."""
        self._match_older(package, wanted)
        deb = self.deb(package)
        if deb is not None:
            self._compare(deb, wanted)
        for location, details in wanted.values():
            if "classification" not in details:
                details.update(self.evidence(location))

    def evidence(self, location: bytes) -> dict:
        try:
            with self.target.open(location, follow=False) as actual:
                return evidence(actual, actual.st.st_size)
        except OSError:
            return {"classification": "unknown"}

    def _match_older(self, package: Package, wanted: dict) -> None:
        from fsaudit_checks.debian import debfile  # reading .deb files: only for damage

        for version, deb in self.older(package):
            open_paths = {p for p, (_, d) in wanted.items() if "classification" not in d}
            if not open_paths:
                return
            try:
                sums = debfile.md5sums(self.target, deb, open_paths)
            except (debfile.DebError, OSError):
                continue
            for path in open_paths:
                details = wanted[path][1]
                if sums.get(path, ("", None))[1] == details.get("actual_md5"):
                    details.update(classification="older-version", matches_version=version)

    def _compare(self, deb: bytes, wanted: dict) -> None:
        from fsaudit_checks.debian import debfile  # reading .deb files: only for damage

        open_paths = {p for p, (_, d) in wanted.items() if "classification" not in d}
        if not open_paths:
            return
        try:
            for member in debfile.members(self.target, deb):
                if member.path not in open_paths or member.fileobj is None:
                    continue
                location, details = wanted[member.path]
                try:
                    with self.target.open(location, follow=False) as actual:
                        packaged = _Hashing(member.fileobj)
                        result = compare(actual, packaged, actual.st.st_size, member.size)
                except OSError:
                    continue
                # Only a member that is the installed file says anything about the damage.
                if packaged.digest.hexdigest() == details.get("expected_md5"):
                    details.update(result, compared_with=deb)
        except (debfile.DebError, OSError):
            return
