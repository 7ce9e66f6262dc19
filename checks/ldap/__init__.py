"""The `ldap` checker: read an OpenLDAP directory over the wire and find what lost writes leave
behind: entries that break the schema, references and parents that point nowhere, duplicate
entryUUIDs, entries the server no longer returns although its database holds them (slapcat),
and replicas that disagree with their provider.

Modules: `directory` talks to a server, `dn` and `schema` are the rules, `entries` checks one
naming context, `slapcat` compares with the server's own database, `replica` with a replica; they
yield plain items (`problems`), which only this module turns into Findings."""

from __future__ import annotations

import errno
import os
import stat
from typing import Iterator, List

from fsaudit.checker import Checker, Option, Skip
from fsaudit_checks.ldap.directory import Credentials, Directory, SearchFailed, Unreachable
from fsaudit_checks.ldap.dn import DnNames
from fsaudit_checks.ldap.entries import REFERENCES, EntriesAudit
from fsaudit_checks.ldap.replica import CsnIndex
from fsaudit_checks.ldap.replica import compare as replica_compare
from fsaudit_checks.ldap.schema import Schema
from fsaudit_checks.ldap.slapcat import compare as slapcat_compare
from fsaudit_checks.ldap.slapcat import discover_ldapi, find_config


def read_secret(path: str) -> str:
    """The first line of a secret file; a FIFO or device there is refused rather than waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        line = handle.read(65536).split(b"\n", 1)[0]
    return line.rstrip(b"\r").decode("utf-8")


class LdapChecker(Checker):
    """OpenLDAP directories: schema, dangling references, orphans, slapcat's view, replicas"""

    name = "ldap"
    covers = "the LDAP directory"
    category = "databases"
    requires = ("ldap3",)
    extra = "ldap"
    options = (
        Option("url", "server URL: ldap://, ldaps:// or ldapi:// (default: slapd's ldapi socket, as root)"),
        Option(
            "base",
            "naming contexts to audit, one DN per --set (default: those the root DSE lists)",
            multiple=True,
            split=False,
        ),
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
            "replica_urls",
            "replicas to compare with the server, one URL per --set (same bind DN and password)",
            multiple=True,
            split=False,
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
        Option("slapcat_timeout", "seconds after which slapcat is stopped", kind=float, default=3600.0),
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
        "duplicate-uuid": "several entries share one entryUUID",
        "search-failed": "the server failed while returning the directory, or lacks a naming context's entry",
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
        if discover_ldapi(target):
            return True
        config = find_config(target, self.settings["slapd_config"] or "")
        if config:
            raise Skip(
                f"slapd is configured in {config.path} but has no ldapi socket (not running?); set ldap.url"
            )
        raise Skip("no slapd here (no ldapi socket, no configuration in /etc/ldap or /etc/openldap)")

    def present(self, target) -> str:
        if self.settings["url"]:
            return f"the LDAP server {self.settings['url']}"
        config = find_config(target, self.settings["slapd_config"] or "")
        return f"slapd (configured in {config.path})" if config else ""

    def run(self, target) -> Iterator:
        credentials = self._credentials()
        if credentials is None:
            return
        url = self.settings["url"] or discover_ldapi(target) or "ldapi:///"
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
                credentials.password = read_secret(path)
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or type(error).__name__
                self.incomplete(f"cannot read ldap.password_file {path}: {reason}")
                return None
        if credentials.bind_dn and credentials.password is None:
            self.incomplete("ldap.bind_dn is set but ldap.password_file is not")
            return None
        return credentials

    def _audit(self, target, directory: Directory, credentials: Credentials) -> Iterator:
        try:
            schema: Schema | None = directory.schema()
        except (Unreachable, SearchFailed) as error:
            schema = None
            self.incomplete(f"{error}: entries were not checked against the schema")
        names = DnNames(schema.aliases if schema else {})
        try:
            bases = self.settings["base"] or directory.naming_contexts()
        except (Unreachable, SearchFailed) as error:
            self.incomplete(f"cannot read the naming contexts of {directory.url} ({error}): set ldap.base")
            return
        if not bases:
            self.incomplete(f"{directory.url} lists no naming contexts: set ldap.base")
            return
        keys = {base: names.key(base) for base in bases}
        audits: List[EntriesAudit] = []
        for base, base_key in keys.items():
            if base_key is None:
                self.incomplete(f"ldap.base {base!r} is not a DN")
                continue
            csns = CsnIndex() if self.settings["replica_urls"] else None
            audit = EntriesAudit(
                directory,
                schema,
                names,
                base,
                base_key,
                listed=not self.settings["base"],
                csns=csns,
                page_size=self.settings["page_size"],
                reference_attributes=self.settings["reference_attributes"],
                progress=self.context.progress,
            )
            audit.others = [key for key in keys.values() if key is not None and key != base_key]
            audits.append(audit)
            yield from self.report(audit.run())
            if self.settings["slapcat"]:
                yield from self.report(
                    slapcat_compare(
                        target,
                        directory,
                        base,
                        audit.dns,
                        names,
                        slapd_config=self.settings["slapd_config"] or "",
                        timeout=self.settings["slapcat_timeout"],
                    )
                )
            if csns is not None:
                yield from self._replicas(
                    directory, credentials, base, names, csns if audit.complete else None
                )
        for audit in audits:
            yield from self.report(audit.check_foreign(audits))

    def _replicas(
        self, provider: Directory, credentials: Credentials, base: str, names: DnNames, csns: CsnIndex | None
    ) -> Iterator:
        for url in self.settings["replica_urls"]:
            if csns is None:
                self.incomplete(
                    f"replica {url} not compared under {base}: the provider could not be read whole"
                )
                continue
            try:
                replica = Directory(url, credentials)
            except Unreachable as error:
                self.incomplete(f"replica not compared: {error}")
                continue
            try:
                yield from self.report(
                    replica_compare(provider, replica, base, names, self.settings["page_size"], csns)
                )
            except SearchFailed as error:
                self.incomplete(f"replica {url} not fully compared under {base}: {error}")
            finally:
                replica.close()
