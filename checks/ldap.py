"""The `ldap` checker: read an OpenLDAP directory over the wire and find what lost writes leave
behind: entries that break the schema, references and parents that point nowhere, duplicate
entryUUIDs, entries the server no longer returns although its database holds them (slapcat),
and replicas that disagree with their provider."""

from __future__ import annotations

import os
from typing import Dict, Iterator, List

from fsaudit.checker import Checker, Option, Skip
from fsaudit_checks.ldap_directory import (
    Credentials,
    Directory,
    SearchFailed,
    Unreachable,
    is_local,
    ldapi_socket,
    text,
)
from fsaudit_checks.ldap_dn import (
    BadDn,
    HashSet,
    dn_hash,
    normalize_dn,
    parent_of,
    parent_text,
    reference_dn,
    within,
)
from fsaudit_checks.ldap_schema import Schema
from fsaudit_checks.ldap_slapcat import Slapcat, find_config, slapcat_program

REFERENCES = ("member", "uniqueMember", "manager", "seeAlso", "owner", "secretary")
MAX_DUPLICATES_LISTED = 100

RESTORE = "restore the entry from a backup (or an LDIF export) with ldapmodify, or fix it by hand"
REIMPORT = (
    "the server's indexes no longer reach this entry: stop slapd, export with slapcat, check the export "
    "and re-import it with slapadd into a fresh database, or restore from backup"
)
DAMAGED_DATABASE = (
    "the database is damaged: stop slapd, keep a copy of its files, export what slapcat can read, and "
    "restore the directory from a backup (or re-import the export into a fresh database)"
)


class LdapChecker(Checker):
    """OpenLDAP directories: schema, dangling references, orphans, slapcat's view, replicas"""

    name = "ldap"
    requires = ("ldap3",)
    extra = "ldap"
    options = (
        Option("url", "server URL: ldap://, ldaps:// or ldapi:// (default: slapd's ldapi socket, as root)"),
        Option("base", "naming contexts to audit (default: those the root DSE lists)", multiple=True),
        Option("bind_dn", "DN for a simple bind (default: SASL EXTERNAL over ldapi, else anonymous)"),
        Option("password_file", "file whose first line is the bind password"),
        Option("ca_file", "CA certificates to verify an ldaps:// server"),
        Option(
            "reference_attributes",
            "DN-valued attributes to follow, besides every DN-syntax attribute in the schema",
            multiple=True,
            default=REFERENCES,
        ),
        Option(
            "replica_urls", "replicas to compare with the server (same bind DN and password)", multiple=True
        ),
        Option(
            "slapd_config",
            "slapd.conf or slapd.d of the server, for slapcat (default: /etc/ldap, /etc/openldap)",
        ),
        Option(
            "slapcat",
            "compare with what slapcat reads offline (as root, server on this machine)",
            kind=bool,
            default=True,
        ),
        Option("page_size", "entries per page of the paged searches", kind=int, default=500),
        Option("timeout", "seconds to wait for a server", kind=float, default=30.0),
    )
    codes = {
        "missing-required-attribute": "an entry lacks an attribute its object classes require",
        "attribute-not-allowed": "an entry holds an attribute its object classes do not allow",
        "no-structural-class": "an entry has no structural object class",
        "structural-class-conflict": "an entry's structural object classes are not one chain",
        "unknown-object-class": "an entry names an object class the schema does not define",
        "unknown-attribute": "an entry holds an attribute type the schema does not define",
        "single-value-violated": "a single-valued attribute holds more than one value",
        "dangling-reference": "a DN-valued attribute points at an entry that does not exist",
        "orphan-entry": "an entry's parent does not exist",
        "duplicate-entry-uuid": "several entries share one entryUUID",
        "search-failed": "the server reported an internal error while returning the directory",
        "entry-not-served": "slapcat finds an entry in the database that the server does not return",
        "entry-count-differs": "the server returns a different number of entries than slapcat finds",
        "slapcat-failed": "slapcat could not read the whole database",
        "provider-behind": "the provider's contextCSN is older than a replica's: it went back in time",
        "replica-behind": "a replica's contextCSN is older than the provider's",
        "entry-missing-on-provider": "an entry is on a replica but not on the provider",
        "entry-newer-on-replica": "an entry is newer on a replica than on the provider",
        "entry-missing-on-replica": "an entry is on the provider but not on a replica",
        "entry-older-on-replica": "an entry is older on a replica than on the provider",
    }

    def applies(self, target) -> bool:
        if self.settings["url"]:
            return True
        if not target.live:
            raise Skip("set ldap.url: slapd is found by itself only on the running system")
        if os.geteuid() != 0:
            raise Skip("set ldap.url: finding slapd by itself needs root (ldapi with SASL EXTERNAL)")
        if ldapi_socket():
            return True
        config = find_config(target, self.settings["slapd_config"] or "")
        if config:
            raise Skip(
                f"slapd is configured in {config.path} but has no ldapi socket (not running?); set ldap.url"
            )
        raise Skip("no slapd here (no ldapi socket, no configuration in /etc/ldap or /etc/openldap)")

    def run(self, target) -> Iterator:
        credentials = self._credentials()
        if credentials is None:
            return
        url = self.settings["url"] or "ldapi:///"
        try:
            directory = Directory(url, credentials)
        except Unreachable as error:
            self.incomplete(str(error))
            return
        try:
            yield from self._audit(target, directory, credentials)
        finally:
            directory.close()

    def _credentials(self) -> Credentials | None:
        credentials = Credentials(
            bind_dn=self.settings["bind_dn"] or "",
            ca_file=self.settings["ca_file"] or "",
            timeout=self.settings["timeout"],
        )
        path = self.settings["password_file"]
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    credentials.password = handle.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as error:
                self.incomplete(f"cannot read ldap.password_file {path}: {error.__class__.__name__}")
                return None
        if credentials.bind_dn and credentials.password is None:
            self.incomplete("ldap.bind_dn is set but ldap.password_file is not")
            return None
        return credentials

    def _audit(self, target, directory: Directory, credentials: Credentials) -> Iterator:
        try:
            schema: Schema | None = directory.schema()
        except Unreachable as error:
            schema = None
            self.incomplete(f"{error}: entries were not checked against the schema")
        aliases = schema.aliases if schema else {}
        bases = self.settings["base"] or directory.naming_contexts()
        if not bases:
            self.incomplete(f"{directory.url} lists no naming contexts: set ldap.base")
            return
        for base in bases:
            try:
                base_key = normalize_dn(base, aliases)
            except BadDn:
                self.incomplete(f"ldap.base {base!r} is not a DN")
                continue
            audit = _BaseAudit(self, directory, schema, base, base_key)
            yield from audit.run()
            yield from self._slapcat(target, directory.url, base, base_key, audit.dns, aliases)
        yield from self._replicas(directory, credentials, bases, aliases)

    def _slapcat(self, target, url: str, base: str, base_key: str, dns: HashSet, aliases) -> Iterator:
        explicit = self.settings["slapd_config"] or ""
        if not self.settings["slapcat"]:
            return
        if not target.live or os.geteuid() != 0 or not (explicit or is_local(url)):
            self.stats["slapcat"] = "not run: needs root on the machine that runs slapd (no --root)"
            return
        config = find_config(target, explicit)
        program = slapcat_program()
        if not config or not program:
            self.stats["slapcat"] = "not run: " + (
                "slapcat is not installed" if config else "no slapd configuration"
            )
            return
        suffix = next((s for s in config.suffixes if within(base_key, _normal(s, aliases))), None)
        if suffix is None:
            self.stats["slapcat"] = f"not run: {config.path} holds no database for {base}"
            return
        slapcat = Slapcat(program, config, suffix)
        found = 0
        for dn in slapcat.dns():
            key = _normal(dn, aliases)
            if key is None or not within(key, base_key):
                continue
            found += 1
            if dn_hash(key) not in dns:
                yield self.finding(
                    "entry-not-served",
                    "critical",
                    f"{dn} is in the database (slapcat) but the server does not return it",
                    subject=dn,
                    details={"dn": dn, "url": url, "config": config.path},
                    advice=REIMPORT,
                )
        self.count("slapcat_entries", found)
        self.stats["slapcat"] = f"compared with {' '.join(slapcat.command)}"
        if slapcat.returncode:
            yield self.finding(
                "slapcat-failed",
                "critical",
                f"slapcat {_ended(slapcat.returncode)} reading {suffix}"
                + (f": {slapcat.errors.splitlines()[-1]}" if slapcat.errors else ""),
                subject=suffix,
                details={
                    "command": slapcat.command,
                    "status": slapcat.returncode,
                    "stderr": slapcat.errors,
                    "entries_read": found,
                },
                advice=DAMAGED_DATABASE,
            )
        served = len(dns)
        if found != served:
            yield self.finding(
                "entry-count-differs",
                "critical",
                f"the server returns {served} entries under {base}, slapcat finds {found} in its database",
                subject=base,
                details={"base": base, "served": served, "slapcat": found, "url": url},
                advice="the server does not serve the whole database: stop slapd, export with slapcat and "
                "re-import into a fresh database, or restore from backup",
            )

    def _replicas(self, provider: Directory, credentials: Credentials, bases: List[str], aliases) -> Iterator:
        from fsaudit_checks.ldap_replica import compare

        for url in self.settings["replica_urls"]:
            try:
                replica = Directory(url, credentials)
            except Unreachable as error:
                self.incomplete(f"replica not compared: {error}")
                continue
            try:
                for base in bases:
                    try:
                        yield from compare(self, provider, replica, base, aliases, self.settings["page_size"])
                    except SearchFailed as error:
                        self.incomplete(f"replica {url} not fully compared under {base}: {error}")
            finally:
                replica.close()


def _ended(returncode: int) -> str:
    return f"was killed by signal {-returncode}" if returncode < 0 else f"stopped with status {returncode}"


def _normal(dn: str, aliases) -> str | None:
    try:
        return normalize_dn(dn, aliases)
    except BadDn:
        return None


class _BaseAudit:
    """One naming context: schema per entry while streaming, then references, parents and
    entryUUIDs from hashes (a second pass names the culprits only when something is missing)."""

    def __init__(
        self, checker: LdapChecker, directory: Directory, schema: Schema | None, base: str, key: str
    ):
        self.checker = checker
        self.directory = directory
        self.schema = schema
        self.base = base
        self.key = key
        self.aliases = schema.aliases if schema else {}
        self.dns = HashSet()
        self.wanted = HashSet()
        self.uuids = HashSet()
        self.references = self._reference_keys(checker.settings["reference_attributes"])

    def _reference_keys(self, names: List[str]) -> set:
        keys = {self.aliases.get(n.lower(), n.lower()) for n in names}
        if self.schema:
            keys |= self.schema.dn_valued()
        return keys

    def _attribute_key(self, name: str) -> str:
        attribute = self.schema.attribute(name) if self.schema else None
        return attribute.key if attribute else name.split(";", 1)[0].lower()

    def _read(self, attributes: List[str]):
        return self.directory.entries(self.base, attributes, self.checker.settings["page_size"])

    def run(self) -> Iterator:
        checker = self.checker
        try:
            for item in self._read(["*", "entryUUID"]):
                yield from self._first_pass(item)
        except SearchFailed as error:
            yield from self._search_failed(error)
            return
        missing = self.wanted.missing_from(self.dns.freeze())
        duplicates = self.uuids.duplicates()
        if not missing and not duplicates:
            return
        try:
            yield from self._second_pass(missing, duplicates)
        except SearchFailed as error:
            checker.incomplete(
                f"second read of {self.base} failed ({error}): some damage is not listed by name"
            )

    def _search_failed(self, error: SearchFailed) -> Iterator:
        reason = f"the server stopped returning {self.base} after {error.entries} entries: {error}"
        if error.damage:
            yield self.checker.finding(
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
        self.checker.incomplete(reason + "; references and parents were not checked")

    def _first_pass(self, item: dict) -> Iterator:
        checker = self.checker
        dn = item["dn"]
        raw: Dict[str, list] = item.get("raw_attributes") or {}
        checker.count("entries_read")
        key = _normal(dn, self.aliases)
        if key is None:
            checker.count("entries_with_unreadable_dn")
            return
        self.dns.add(dn_hash(key))
        if key != self.key:
            self.wanted.add(dn_hash(parent_of(key)))
        if self.schema:
            for problem in self.schema.check({k: v for k, v in raw.items() if k.lower() != "entryuuid"}):
                yield checker.finding(
                    problem.code,
                    "critical",
                    f"{dn}: {problem.message}",
                    subject=dn,
                    details={"dn": dn, "attribute": problem.attribute},
                    advice=RESTORE,
                )
        for name, values in raw.items():
            attribute = self._attribute_key(name)
            if attribute == "entryuuid":
                for value in values:
                    self.uuids.add(dn_hash(text(value).strip().lower()))
            elif attribute in self.references:
                yield from self._note_references(dn, name, values)

    def _note_references(self, dn: str, name: str, values: list) -> Iterator:
        checker = self.checker
        for value in values:
            target = reference_dn(text(value))
            key = _normal(target, self.aliases)
            if key is None:
                yield checker.finding(
                    "dangling-reference",
                    "critical",
                    f"{dn}: {name} holds {target!r}, which is not a DN",
                    subject=dn,
                    details={"dn": dn, "attribute": name, "target": target},
                    advice=f"restore the value from a backup, or remove it from {name}",
                )
            elif within(key, self.key):
                checker.count("references_checked")
                self.wanted.add(dn_hash(key))
            else:
                checker.count("references_outside_base")

    def _second_pass(self, missing: set, duplicates: set) -> Iterator:
        checker = self.checker
        names = sorted(self.references) + ["entryUUID"]
        holders: Dict[int, List[str]] = {}
        uuid_text: Dict[int, str] = {}
        for item in self._read(names):
            dn = item["dn"]
            key = _normal(dn, self.aliases)
            if key is None:
                continue
            if key != self.key and dn_hash(parent_of(key)) in missing:
                parent = parent_text(dn)
                yield checker.finding(
                    "orphan-entry",
                    "critical",
                    f"{dn}: its parent {parent} does not exist",
                    subject=dn,
                    details={"dn": dn, "parent": parent},
                    advice=f"restore {parent} from a backup; until then searches below it miss this entry",
                )
            for name, values in (item.get("raw_attributes") or {}).items():
                attribute = self._attribute_key(name)
                if attribute == "entryuuid":
                    for value in values:
                        hashed = dn_hash(text(value).strip().lower())
                        if (
                            hashed in duplicates
                            and len(holders.setdefault(hashed, [])) < MAX_DUPLICATES_LISTED
                        ):
                            holders[hashed].append(dn)
                            uuid_text[hashed] = text(value)
                elif attribute in self.references:
                    yield from self._dangling(dn, name, values, missing)
        for hashed, dns in holders.items():
            yield checker.finding(
                "duplicate-entry-uuid",
                "critical",
                f"{len(dns)} entries share the entryUUID {uuid_text[hashed]}: {'; '.join(dns)}",
                subject=uuid_text[hashed],
                details={"entry_uuid": uuid_text[hashed], "dns": dns},
                advice="entries lost their own identity (an old copy of one came back?): keep the right one, "
                "restore the others from a backup; replication cannot tell them apart until then",
            )

    def _dangling(self, dn: str, name: str, values: list, missing: set) -> Iterator:
        for value in values:
            target = reference_dn(text(value))
            key = _normal(target, self.aliases)
            if key is not None and within(key, self.key) and dn_hash(key) in missing:
                yield self.checker.finding(
                    "dangling-reference",
                    "critical",
                    f"{dn}: {name} points at {target}, which does not exist",
                    subject=dn,
                    details={"dn": dn, "attribute": name, "target": target},
                    advice=f"restore {target} from a backup, or remove the reference from {name} of {dn}",
                )
