"""Distinguished names for the ldap checker: one normal form to compare them, and a compact set of
their 64-bit hashes, so a directory of millions of entries is checked in a few bytes per entry."""

from __future__ import annotations

import hashlib
import re
from array import array
from bisect import bisect_left
from typing import Dict, Iterable, Iterator, List

_HEX = set("0123456789abcdefABCDEF")
_SPACES = re.compile(r"\s+")
# uniqueMember (Name and Optional UID syntax) may end with "#'0101'B" after the DN.
_OPTIONAL_UID = re.compile(r"#'[01]*'B$")


class BadDn(ValueError):
    """A value that should be a DN and is not one."""


def _split(dn: str) -> List[List[tuple]]:
    """RDNs as lists of (type, unescaped value) pairs; multi-valued RDNs hold several."""
    rdns: List[List[tuple]] = []
    avas: List[tuple] = []
    kind: str | None = None
    chunk = bytearray()
    i = 0
    while i <= len(dn):
        char = dn[i] if i < len(dn) else ","
        if char == "\\" and i + 1 < len(dn):
            pair = dn[i + 1 : i + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                chunk.append(int(pair, 16))
                i += 3
                continue
            chunk += dn[i + 1].encode("utf-8", "surrogateescape")
            i += 2
            continue
        if char == "=" and kind is None:
            kind = chunk.decode("utf-8", "replace").strip()
            chunk = bytearray()
        elif char in ",;+":
            if kind is None or not kind:
                raise BadDn(f"not a DN: {dn!r}")
            avas.append((kind, chunk.decode("utf-8", "replace")))
            kind, chunk = None, bytearray()
            if char != "+":
                rdns.append(avas)
                avas = []
        else:
            chunk += char.encode("utf-8", "surrogateescape")
        i += 1
    return rdns


def _escape(value: str) -> str:
    return value.replace("\\", "\\5c").replace(",", "\\2c").replace("+", "\\2b").replace("=", "\\3d")


_FAST_UNSAFE = set('\\+;"')
MAX_CACHED_RDNS = 1 << 16


class DnNames:
    """Normal forms of DNs: attribute names by their primary name in one schema (`aliases`: lower
    case name or OID -> primary name), values without escapes, case and extra spaces (the matching
    rules of naming attributes are nearly all case-insensitive). Repeated RDNs (`ou=people`,
    `dc=com`) are normalized once."""

    def __init__(self, aliases: Dict[str, str] | None = None):
        self.aliases = aliases or {}
        self._rdns: Dict[str, str] = {}

    def attribute(self, name: str) -> str:
        name = name.lower()
        return self.aliases.get(name, name)

    def normal(self, dn: str) -> str:
        """The normal form of `dn` ("" for the root DSE); raises BadDn for text that is not a DN."""
        if not dn.strip():
            return ""
        if _FAST_UNSAFE.isdisjoint(dn):
            return ",".join(self._fast_rdn(rdn, dn) for rdn in dn.split(","))
        return ",".join(self._rdn(rdn) for rdn in _split(dn))

    def key(self, dn: str) -> str | None:
        """The normal form of `dn`, or None when it is not a DN."""
        try:
            return self.normal(dn)
        except BadDn:
            return None

    def _fast_rdn(self, rdn: str, dn: str) -> str:
        # Single-valued RDN without escapes: the common case, cached.
        cached = self._rdns.get(rdn)
        if cached is None:
            kind, equals, value = rdn.partition("=")
            if not equals or not kind.strip():
                raise BadDn(f"not a DN: {dn!r}")
            cached = self._rdn([(kind.strip(), value)])
            if len(self._rdns) >= MAX_CACHED_RDNS:
                self._rdns.clear()
            self._rdns[rdn] = cached
        return cached

    def _rdn(self, avas: List[tuple]) -> str:
        parts = []
        for kind, value in avas:
            value = _SPACES.sub(" ", value.strip()).lower()
            parts.append(f"{_escape(self.attribute(kind))}={_escape(value)}")
        return "+".join(sorted(parts))


def normalize_dn(dn: str, aliases: Dict[str, str] | None = None) -> str:
    """The normal form of one DN (see DnNames); raises BadDn for text that is not a DN."""
    return DnNames(aliases).normal(dn)


def reference_dn(value: str) -> str:
    """The DN inside a DN-valued attribute value (strips uniqueMember's optional UID)."""
    return _OPTIONAL_UID.sub("", value)


def parent_of(normalized: str) -> str:
    """The parent of a normalized DN ("" for a top-level entry)."""
    head, _, rest = normalized.partition(",")
    return rest


def within(normalized: str, base: str) -> bool:
    """Is the normalized DN `base` itself or below it?"""
    return not base or normalized == base or normalized.endswith("," + base)


def dn_hash(normalized: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")


class HashSet:
    """A set of 64-bit hashes in 8 bytes each: append while streaming, then `freeze()` to look up.

    With n entries the chance of any two distinct DNs sharing a hash is about n²/2⁶⁵ (3e-8 for a
    million entries): a rare false "present" is the price of flat memory."""

    def __init__(self):
        self._items = array("Q")
        self._frozen = False

    def add(self, value: int) -> None:
        self._items.append(value)
        self._frozen = False

    def update(self, values: Iterable[int]) -> None:
        self._items.extend(values)
        self._frozen = False

    def freeze(self) -> HashSet:
        if not self._frozen:
            self._items = array("Q", sorted(self._items))
            self._frozen = True
        return self

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, value: int) -> bool:
        self.freeze()
        index = bisect_left(self._items, value)
        return index < len(self._items) and self._items[index] == value

    def duplicates(self) -> set:
        """The values added more than once."""
        self.freeze()
        items = self._items
        return {items[i] for i in range(1, len(items)) if items[i] == items[i - 1]}

    def distinct(self) -> Iterator[int]:
        """Each value once, in order."""
        self.freeze()
        previous = None
        for value in self._items:
            if value != previous:
                yield value
            previous = value

    def missing_from(self, *others: HashSet) -> set:
        """The distinct values of this set that none of `others` holds."""
        return {value for value in self.distinct() if not any(value in other for other in others)}


def parent_text(dn: str) -> str:
    """The parent of a DN as the server wrote it: everything after the first unescaped comma."""
    i = 0
    while i < len(dn):
        if dn[i] == "\\":
            i += 2
            continue
        if dn[i] in ",;":
            return dn[i + 1 :].strip()
        i += 1
    return ""
