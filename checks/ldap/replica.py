"""A replica against its provider: contextCSN per server id, entries on one side only, and
entryCSNs that differ. A provider behind its replica was rolled back (its disk lost writes); a
replica behind its provider is lagging or lost writes of its own and can be re-synced."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from datetime import datetime, timezone
from typing import Dict, Iterator, Tuple

from fsaudit_checks.ldap.directory import Directory, SearchFailed, text
from fsaudit_checks.ldap.dn import DnNames, dn_hash
from fsaudit_checks.ldap.problems import Count, Item, Problem

# 20261121195301.591814Z#000000#000#000000: time, change count, server id, modification count
_CSN = re.compile(r"^(\d{14})(?:\.(\d{1,6}))?Z#([0-9a-fA-F]+)#([0-9a-fA-F]+)#([0-9a-fA-F]+)$")

PROVIDER_LOST_ENTRY = (
    "the provider lost this entry (rolled back?): copy it from the replica before the replica re-syncs "
    "and deletes it, or restore the provider from a newer backup"
)
PROVIDER_OLDER_ENTRY = (
    "the provider holds an older version of this entry (rolled back?): take the newer one from the "
    "replica before the replica re-syncs, or restore the provider from a newer backup"
)
PROVIDER_ROLLED_BACK = (
    "the provider lost changes that the replica still holds: keep the replica from re-syncing, recover "
    "the changes from it (or promote it) and restore the provider"
)
RESYNC = "the replica is behind or lost writes: check that replication runs, or re-sync it from the provider"


def parse_csn(value: str) -> Tuple[str, int, int] | None:
    """(comparable time text, change count, server id) of a CSN, or None when it is not one."""
    match = _CSN.match(value.strip())
    if not match:
        return None
    stamp, fraction, count, sid, _ = match.groups()
    return f"{stamp}.{(fraction or '').ljust(6, '0')}", int(count, 16), int(sid, 16)


def csn_key(value: str) -> int:
    """A CSN as one 64-bit number that orders like the CSN (0 when it cannot be parsed)."""
    parsed = parse_csn(value)
    if not parsed:
        return 0
    stamp, count, _ = parsed
    try:
        moment = datetime.strptime(stamp, "%Y%m%d%H%M%S.%f").replace(tzinfo=timezone.utc)
    except ValueError:
        return 0
    micros = int(moment.timestamp()) * 1_000_000 + moment.microsecond
    return max(micros, 0) * 4096 + min(count, 4095)


def context_csns(values) -> Dict[int, str]:
    """The newest CSN per server id among contextCSN values."""
    result: Dict[int, Tuple[tuple, str]] = {}
    for value in values:
        value = text(value).strip()
        parsed = parse_csn(value)
        if parsed and (parsed[2] not in result or parsed[:2] > result[parsed[2]][0]):
            result[parsed[2]] = (parsed[:2], value)
    return {sid: csn for sid, (_, csn) in result.items()}


class CsnIndex:
    """DN hash -> entryCSN key for every entry of the provider, in 16 bytes per entry."""

    def __init__(self):
        self.hashes = array("Q")
        self.csns = array("Q")
        self.seen = bytearray()

    def add(self, hashed: int, csn: int) -> None:
        self.hashes.append(hashed)
        self.csns.append(csn)

    def freeze(self) -> None:
        order = sorted(range(len(self.hashes)), key=self.hashes.__getitem__)
        self.hashes = array("Q", (self.hashes[i] for i in order))
        self.csns = array("Q", (self.csns[i] for i in order))
        self.seen = bytearray(len(self.hashes))  # per replica: which entries it holds too

    def find(self, hashed: int) -> int:
        index = bisect_left(self.hashes, hashed)
        return index if index < len(self.hashes) and self.hashes[index] == hashed else -1


def entry_csn(raw: dict) -> str:
    """The entryCSN among an entry's raw attributes ("" when it has none)."""
    for name, values in raw.items():
        if name.lower() == "entrycsn" and values:
            return text(values[0])
    return ""


def _csn_of(item: dict) -> str:
    return entry_csn(item.get("raw_attributes") or {})


def compare(
    provider: Directory,
    replica: Directory,
    base: str,
    names: DnNames,
    page_size: int,
    index: CsnIndex,
) -> Iterator[Item]:
    """What `replica` shows against `provider` under `base`; `index` holds the provider's entries
    (frozen, read in the same pass as the other checks). Raises SearchFailed when a server stops
    answering, after yielding what was found."""
    yield from _compare_context(provider, replica, base)
    index.seen = bytearray(len(index.hashes))
    compared = 0
    try:
        for item in replica.entries(base, ["entryCSN"], page_size):
            compared += 1
            yield from _compare_entry(provider, replica, item, names, index)
    except SearchFailed:
        yield Count("replica_entries_compared", compared)
        raise
    yield Count("replica_entries_compared", compared)
    if index.seen.count(0):
        yield from _missing_on_replica(provider, replica, base, names, page_size, index)


def _compare_entry(provider: Directory, replica: Directory, item: dict, names: DnNames, index: CsnIndex):
    dn = item["dn"]
    hashed = _hash(dn, names)
    if hashed is None:
        return
    position = index.find(hashed)
    theirs = csn_key(_csn_of(item))
    if position < 0 and not _caught_up(provider, dn, theirs):
        yield Problem(
            "entry-missing-on-provider",
            "critical",
            f"on the replica {replica.url} but not on the provider",
            subject=dn,
            details={
                "replica": replica.url,
                "provider": provider.url,
                "dn": dn,
                "entry_csn": _csn_of(item),
            },
            advice=PROVIDER_LOST_ENTRY,
        )
    if position < 0:
        return
    index.seen[position] = 1
    ours = index.csns[position]
    if theirs > ours and not _caught_up(provider, dn, theirs):
        yield Problem(
            "entry-newer-on-replica",
            "critical",
            f"newer on the replica {replica.url} than on the provider",
            subject=dn,
            details={
                "replica": replica.url,
                "provider": provider.url,
                "dn": dn,
                "replica_csn": _csn_of(item),
            },
            advice=PROVIDER_OLDER_ENTRY,
        )
    elif theirs < ours:
        yield Problem(
            "entry-older-on-replica",
            "warning",
            f"older on the replica {replica.url} than on the provider",
            subject=dn,
            details={
                "replica": replica.url,
                "provider": provider.url,
                "dn": dn,
                "replica_csn": _csn_of(item),
            },
            advice=RESYNC,
        )


def _caught_up(provider: Directory, dn: str, replica_csn: int) -> bool:
    """Does the provider now hold `dn` at least as new as the replica? The provider is read first and
    the replica after, so a change made meanwhile reaches the replica but not the provider's index:
    asking the provider again tells that from a provider that lost it."""
    try:
        entry = provider.read(dn, ["entryCSN"])
    except SearchFailed:
        return False
    if entry is None:
        return False
    values = entry.get("entryCSN") or [b""]
    return csn_key(text(values[0])) >= replica_csn


def _missing_on_replica(provider, replica, base, names, page_size, index) -> Iterator[Item]:
    # A second pass over the provider names the entries the replica lacks: only their hashes were kept.
    for item in provider.entries(base, ["1.1"], page_size):
        hashed = _hash(item["dn"], names)
        position = index.find(hashed) if hashed is not None else -1
        if position >= 0 and not index.seen[position]:
            index.seen[position] = 1
            dn = item["dn"]
            yield Problem(
                "entry-missing-on-replica",
                "warning",
                f"on the provider but not on the replica {replica.url}",
                subject=dn,
                details={"replica": replica.url, "provider": provider.url, "dn": dn},
                advice=RESYNC,
            )


def _compare_context(provider: Directory, replica: Directory, base: str) -> Iterator[Item]:
    # The replica first: what it holds then, the provider (unless rolled back) holds by the time it is asked.
    theirs = context_csns((replica.read(base, ["contextCSN"]) or {}).get("contextCSN", []))
    ours = context_csns((provider.read(base, ["contextCSN"]) or {}).get("contextCSN", []))
    for sid in sorted(set(ours) | set(theirs)):
        mine, other = ours.get(sid), theirs.get(sid)
        details = {"replica": replica.url, "provider": provider.url, "server_id": sid}
        details.update(provider_csn=mine, replica_csn=other)
        if other and (not mine or parse_csn(other)[:2] > parse_csn(mine)[:2]):
            yield Problem(
                "provider-behind",
                "critical",
                f"the provider's contextCSN for server id {sid} is older than the replica's {replica.url} "
                f"({mine or 'none'} < {other}): the provider went back to an older state",
                subject=f"{base} sid {sid}",
                details=details,
                advice=PROVIDER_ROLLED_BACK,
            )
        elif mine and (not other or parse_csn(other)[:2] < parse_csn(mine)[:2]):
            yield Problem(
                "replica-behind",
                "warning",
                f"the replica {replica.url} is behind the provider for server id {sid} "
                f"({other or 'none'} < {mine})",
                subject=f"{base} sid {sid}",
                details=details,
                advice=RESYNC,
            )


def _hash(dn: str, names: DnNames) -> int | None:
    key = names.key(dn)
    return None if key is None else dn_hash(key)
