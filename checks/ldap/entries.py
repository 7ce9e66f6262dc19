"""The entries of one naming context, read once while streaming: each against the schema, and
the DNs they name (parents, references) and their entryUUIDs kept as 64-bit hashes, so checking
references and duplicates costs a few bytes per entry. A second read names the culprits, only
when something is missing or duplicated. What is found is yielded as plain items (`problems`)."""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

from fsaudit.progress import Progress
from fsaudit_checks.ldap.directory import Directory, SearchFailed, text
from fsaudit_checks.ldap.dn import (
    DnNames,
    HashSet,
    dn_hash,
    parent_of,
    parent_text,
    reference_dn,
    within,
)
from fsaudit_checks.ldap.problems import Incomplete, Item, Problem, counts
from fsaudit_checks.ldap.replica import CsnIndex, csn_key, entry_csn
from fsaudit_checks.ldap.schema import Schema

REFERENCES = ("member", "uniqueMember", "manager", "seeAlso", "owner", "secretary")
MAX_DUPLICATES_LISTED = 100
NO_SUCH_OBJECT = 32
PROGRESS_STEP = 100


class EntriesAudit:
    """One naming context: schema per entry while streaming, then references, parents and
    entryUUIDs from hashes (a second pass names the culprits only when something is missing)."""

    def __init__(
        self,
        directory: Directory,
        schema: Schema | None,
        names: DnNames,
        base: str,
        key: str,
        listed: bool = False,
        csns: CsnIndex | None = None,
        page_size: int = 500,
        reference_attributes: Sequence[str] = REFERENCES,
        progress=None,
    ):
        self.directory = directory
        self.schema = schema
        self.base = base
        self.key = key
        self.names = names
        self.dns = HashSet()
        self.wanted = HashSet()
        # References into the other audited naming contexts, checked once all are read.
        self.others: List[str] = []
        self.foreign = HashSet()
        self.uuids = HashSet()
        self.references = self._reference_keys(list(reference_attributes))
        self.page_size = page_size
        self.progress = progress
        # Counters kept while streaming, and reasons found on the way; yielded when a read ends.
        self.tally: Dict[str, int] = {}
        self.reasons: List[str] = []
        # The base is a naming context the server itself lists (not one the user named).
        self.listed = listed
        # DN hash -> entryCSN of every entry, kept for comparing replicas (None: no replicas).
        self.csns = csns
        # Whether the whole naming context was read.
        self.complete = False

    def _reference_keys(self, names: List[str]) -> set:
        keys = {self.names.attribute(n) for n in names}
        if self.schema:
            keys |= self.schema.dn_valued()
        return keys

    def _attribute_key(self, name: str) -> str:
        attribute = self.schema.attribute(name) if self.schema else None
        return attribute.key if attribute else name.split(";", 1)[0].lower()

    def _read(self, attributes: List[str]):
        return self.directory.entries(self.base, attributes, self.page_size)

    def _count(self, key: str, amount: int = 1) -> None:
        self.tally[key] = self.tally.get(key, 0) + amount

    def _summary(self) -> Iterator[Item]:
        """The counts and reasons gathered so far, then cleared."""
        yield from counts(self.tally)
        yield from (Incomplete(reason) for reason in self.reasons)
        self.tally, self.reasons = {}, []

    def run(self) -> Iterator[Item]:
        """Read the naming context and check it; then name the culprits if something is missing."""
        yield from self._check()
        yield from self._summary()

    def _check(self) -> Iterator[Item]:
        progress = self.progress or Progress()
        progress.start(f"ldap: reading {self.base}")
        attributes = ["*", "entryUUID", "entryCSN"] if self.csns is not None else ["*", "entryUUID"]
        try:
            for count, item in enumerate(self._read(attributes), 1):
                if count % PROGRESS_STEP == 0:
                    progress.advance(PROGRESS_STEP)
                yield from self._first_pass(item)
        except SearchFailed as error:
            yield from self._search_failed(error)
            return
        finally:
            progress.stop()
        self.complete = True
        if self.csns is not None:
            self.csns.freeze()
        # hash -> whether the server cannot read it by name either (None: not asked yet)
        missing: Dict[int, bool | None] = dict.fromkeys(self.wanted.missing_from(self.dns.freeze()))
        duplicates = self.uuids.duplicates()
        if not missing and not duplicates:
            return
        try:
            yield from self._second_pass(missing, duplicates)
        except SearchFailed as error:
            yield Incomplete(
                f"second read of {self.base} failed ({error}): some damage is not listed by name"
            )

    def check_foreign(self, audits: List[EntriesAudit]) -> Iterator[Item]:
        """Dangling references into the other naming contexts, once every one of them was read."""
        if not self.foreign or not all(audit.complete for audit in audits):
            return
        missing: Dict[int, bool | None] = dict.fromkeys(self.foreign.missing_from(*(a.dns for a in audits)))
        if not missing:
            return
        try:
            yield from self._second_pass(missing, set())
        except SearchFailed as error:
            yield Incomplete(f"second read of {self.base} failed ({error}): some damage is not listed")
        yield from self._summary()

    def _search_failed(self, error: SearchFailed) -> Iterator:
        reason = f"the server stopped returning {self.base} after {error.entries} entries: {error}"
        if error.code == NO_SUCH_OBJECT and not error.entries:
            if not self.listed:
                yield Incomplete(f"ldap.base {self.base} does not exist on {self.directory.url}")
                return
            reason = f"the server lists {self.base} as a naming context but has no entry there"
        if error.damage or error.code == NO_SUCH_OBJECT:
            yield Problem(
                "search-failed",
                "critical",
                reason,
                subject=self.base,
                details={
                    "base": self.base,
                    "url": self.directory.url,
                    "result": error.code,
                    "description": error.description,
                    "entries_read": error.entries,
                },
                advice="the server cannot read part of its database: stop slapd, keep a copy of its files, "
                "export what slapcat can read and restore the directory from a backup",
            )
        yield Incomplete(reason + "; references and parents were not checked")

    def _first_pass(self, item: dict) -> Iterator:
        dn = item["dn"]
        raw: Dict[str, list] = item.get("raw_attributes") or {}
        self._count("entries_read")
        key = self.names.key(dn)
        if key is None:
            self._count("entries_with_unreadable_dn")
            return
        hashed = dn_hash(key)
        self.dns.add(hashed)
        if self.csns is not None:
            self.csns.add(hashed, csn_key(entry_csn(raw)))
        if key != self.key:
            self.wanted.add(dn_hash(parent_of(key)))
        if self.schema:
            for problem in self.schema.check(raw):
                yield Problem(
                    problem.code,
                    "critical",
                    problem.message,
                    subject=dn,
                    details={"dn": dn, "attribute": problem.attribute},
                    advice=f"restore {dn} from a backup (or an LDIF export), or fix {problem.attribute}",
                )
        for name, values in raw.items():
            attribute = self._attribute_key(name)
            if attribute == "entryuuid":
                for value in values:
                    self.uuids.add(dn_hash(text(value).strip().lower()))
            elif attribute in self.references:
                yield from self._note_references(dn, name, values)

    def _note_references(self, dn: str, name: str, values: list) -> Iterator:
        for value in values:
            target = reference_dn(text(value))
            key = self.names.key(target)
            if key is None:
                yield Problem(
                    "dangling-reference",
                    "critical",
                    f"{name} holds {target!r}, which is not a DN",
                    subject=dn,
                    details={"dn": dn, "attribute": name, "target": target},
                    advice=f"restore the value from a backup, or remove it from {name}",
                )
            elif within(key, self.key):
                self._count("references_checked")
                self.wanted.add(dn_hash(key))
            elif any(within(key, other) for other in self.others):
                self._count("references_checked")
                self.foreign.add(dn_hash(key))
            else:
                self._count("references_outside_base")

    def _second_pass(self, missing: Dict[int, bool | None], duplicates: set) -> Iterator:
        holders: Dict[int, List[str]] = {}
        uuid_text: Dict[int, str] = {}
        stopped: SearchFailed | None = None
        try:
            for item in self._read(sorted(self.references) + ["entryUUID"]):
                yield from self._name_culprits(item, missing, duplicates, holders, uuid_text)
        except SearchFailed as error:
            # The entries already seen sharing an entryUUID are named all the same.
            stopped = error
        for hashed, dns in holders.items():
            yield Problem(
                "duplicate-uuid",
                "critical",
                f"{len(dns)} entries share the entryUUID {uuid_text[hashed]}: {'; '.join(dns)}",
                subject=uuid_text[hashed],
                details={"entry_uuid": uuid_text[hashed], "dns": dns},
                advice="entries lost their own identity (an old copy of one came back?): keep the right one, "
                "restore the others from a backup; replication cannot tell them apart until then",
            )
        if stopped is not None:
            raise stopped

    def _name_culprits(self, item: dict, missing, duplicates, holders: dict, uuid_text: dict) -> Iterator:
        """Findings for one entry of the second read: its parent or references missing; its DN noted
        in `holders` when its entryUUID is one of the `duplicates`."""
        dn = item["dn"]
        key = self.names.key(dn)
        if key is None:
            return
        parent = parent_text(dn)
        if key != self.key and self._missing(parent_of(key), parent, missing):
            yield Problem(
                "orphan-entry",
                "critical",
                f"its parent {parent} does not exist",
                subject=dn,
                details={"dn": dn, "parent": parent},
                advice=f"restore {parent} from a backup; until then searches below it miss this entry",
            )
        for name, values in (item.get("raw_attributes") or {}).items():
            attribute = self._attribute_key(name)
            if attribute == "entryuuid":
                for value in values:
                    hashed = dn_hash(text(value).strip().lower())
                    if hashed in duplicates and len(holders.setdefault(hashed, [])) < MAX_DUPLICATES_LISTED:
                        holders[hashed].append(dn)
                        uuid_text[hashed] = text(value)
            elif attribute in self.references:
                yield from self._dangling(dn, name, values, missing)

    def _missing(self, key: str, dn: str, missing: Dict[int, bool | None]) -> bool:
        """Is the entry `dn` (normal form `key`) missing? Searches leave out subentries, referral
        objects and glue entries: one read by name (per DN) tells those from lost entries. The
        server's answer noSuchObject is that answer (the reference dangles); a read that fails for
        another reason (busy, refused) proves nothing and leaves the reference unverified."""
        hashed = dn_hash(key)
        if hashed not in missing:
            return False
        if missing[hashed] is None:
            try:
                missing[hashed] = self.directory.read(dn, ["1.1"], as_stored=True) is None
            except SearchFailed as error:
                if not error.damage:
                    missing[hashed] = False
                    self._count("references_not_verified")
                    reason = (
                        f"some entries could not be read by name on {self.directory.url} ({error}): "
                        "references to them were not verified"
                    )
                    if reason not in self.reasons:
                        self.reasons.append(reason)
                    return False
                missing[hashed] = True
            if not missing[hashed]:
                self._count("hidden_entries_referenced")
        return bool(missing[hashed])

    def _dangling(self, dn: str, name: str, values: list, missing: Dict[int, bool | None]) -> Iterator:
        for value in values:
            target = reference_dn(text(value))
            key = self.names.key(target)
            if key is not None and self._missing(key, target, missing):
                yield Problem(
                    "dangling-reference",
                    "critical",
                    f"{name} points at {target}, which does not exist",
                    subject=dn,
                    details={"dn": dn, "attribute": name, "target": target},
                    advice=f"restore {target} from a backup, or remove the reference from {name} of {dn}",
                )
