"""Talking to one LDAP server for the ldap checker: connect and bind, read the root DSE and the
schema, and stream a subtree with paged searches."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Dict, Iterator, List
from urllib.parse import quote, unquote, urlsplit

from fsaudit_checks.ldap.schema import Schema

LDAPI_SOCKETS = (
    "/run/slapd/ldapi",
    "/var/run/slapd/ldapi",
    "/run/openldap/ldapi",
    "/var/run/openldap/ldapi",
    "/run/ldapi",
    "/var/run/ldapi",
)
_RAISE_LIMITS = (
    " (raise the bind DN's limits in slapd, e.g. `limits dn.exact=... size=unlimited`, or bind as the rootdn)"
)
LIMIT_HINTS = {
    3: _RAISE_LIMITS,
    4: _RAISE_LIMITS,
    11: _RAISE_LIMITS,
    50: " (the bind DN may not read the whole directory)",
}
MANAGE_DSA_IT = "2.16.840.1.113730.3.4.2"
PAGED_RESULTS = "1.2.840.113556.1.4.319"
# Result codes with which a server reports trouble in its own storage rather than a limit or a refusal.
DAMAGE_RESULTS = {1: "operationsError", 80: "other"}


class Unreachable(Exception):
    """The server could not be reached or would not let us in: the check cannot run, nothing is damaged."""


class SearchFailed(Exception):
    """A search ended with an error result after `entries` entries."""

    def __init__(self, code: int, description: str, message: str, entries: int):
        hint = LIMIT_HINTS.get(code, "")
        super().__init__(f"{description} ({code}){': ' + message if message else ''}{hint}")
        self.code = code
        self.description = description
        self.entries = entries

    @property
    def damage(self) -> bool:
        return self.code in DAMAGE_RESULTS


@dataclass
class Credentials:
    bind_dn: str = ""
    password: str | None = field(default=None, repr=False)
    ca_file: str = ""
    timeout: float = 30.0


def ldapi_socket(path: str = "") -> str | None:
    """The ldapi socket to use: `path` when given, else the first default one that exists."""
    for candidate in [path] if path else LDAPI_SOCKETS:
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def is_local(url: str) -> bool:
    """Does `url` name a server on this machine (ldapi, loopback, or this host's name)?"""
    parts = urlsplit(url)
    if parts.scheme.lower() == "ldapi":
        return True
    host = (parts.hostname or "").lower()
    if host in ("", "localhost", "::1") or host.startswith("127."):
        return True
    # This host's own name, without a DNS lookup (which can hang on a damaged VM).
    hostname = socket.gethostname().lower()
    return host == hostname or host.split(".", 1)[0] == hostname


def _server(url: str, credentials: Credentials):
    import ssl

    import ldap3

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "ldapi":
        path = ldapi_socket(unquote(parts.netloc))
        if not path:
            raise Unreachable(f"no ldapi socket at {unquote(parts.netloc) or ', '.join(LDAPI_SOCKETS)}")
        return ldap3.Server("ldapi://" + quote(path, safe=""), get_info=ldap3.NONE)
    if scheme not in ("ldap", "ldaps"):
        raise Unreachable(f"unsupported URL {url!r}: use ldap://, ldaps:// or ldapi://")
    try:
        port = parts.port
    except ValueError as error:
        raise Unreachable(f"bad URL {url!r}: {error}") from None
    tls = None
    if scheme == "ldaps":
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=credentials.ca_file or None)
    return ldap3.Server(
        parts.hostname or "localhost",
        port=port or (636 if scheme == "ldaps" else 389),
        use_ssl=scheme == "ldaps",
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=credentials.timeout,
    )


class Directory:
    """A bound connection to one server; `url` is how findings name it."""

    def __init__(self, url: str, credentials: Credentials):
        import ldap3
        from ldap3.core.exceptions import LDAPException

        self.url = url
        server = _server(url, credentials)
        if credentials.bind_dn:
            options = dict(
                user=credentials.bind_dn, password=credentials.password or "", authentication=ldap3.SIMPLE
            )
        elif urlsplit(url).scheme.lower() == "ldapi":
            options = dict(authentication=ldap3.SASL, sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="")
        else:
            options = dict(authentication=ldap3.ANONYMOUS)
        self.connection = ldap3.Connection(
            server,
            receive_timeout=max(1, int(round(credentials.timeout))),
            raise_exceptions=False,
            read_only=True,
            **options,
        )
        who = credentials.bind_dn or ("SASL EXTERNAL" if options.get("sasl_mechanism") else "anonymous")
        try:
            self.connection.open()
            bound = self.connection.bind()
        except LDAPException as error:
            raise Unreachable(f"cannot connect to {url}: {error}") from None
        if not bound:
            result = self.connection.result or {}
            description = result.get("description") or "refused"
            detail = f" ({result.get('message')})" if result.get("message") else ""
            hint = (
                " (wrong bind DN or password: check ldap.bind_dn and ldap.password_file)"
                if result.get("result") == 49
                else ""
            )
            self.close()
            raise Unreachable(f"bind to {url} as {who} failed: {description}{detail}{hint}")

    def close(self) -> None:
        try:
            self.connection.unbind()
        except Exception:  # closing a broken connection is best effort
            pass

    def read(
        self, dn: str, attributes: List[str], where: str = "(objectClass=*)", as_stored: bool = False
    ) -> Dict[str, list] | None:
        """The raw attributes of one entry, or None when it does not exist. `as_stored` reads
        referral objects and glue entries as entries (ManageDsaIT) rather than following them."""
        import ldap3
        from ldap3.core.exceptions import LDAPException

        controls = [(MANAGE_DSA_IT, True, None)] if as_stored else None
        try:
            self.connection.search(dn, where, ldap3.BASE, attributes=attributes, controls=controls)
        except LDAPException as error:
            raise SearchFailed(-1, type(error).__name__, str(error), 0) from None
        result = self.connection.result or {}
        if result.get("result") == 32:
            return None
        if result.get("result"):
            raise SearchFailed(result["result"], result.get("description", ""), result.get("message", ""), 0)
        for item in self.connection.response or []:
            if item.get("type") == "searchResEntry":
                return item.get("raw_attributes") or {}
        return None

    def root_dse(self) -> Dict[str, list]:
        entry = self.read("", ["namingContexts", "subschemaSubentry", "contextCSN", "+"])
        if entry is None:
            raise Unreachable(f"{self.url} does not show its root DSE")
        return entry

    def naming_contexts(self) -> List[str]:
        return [text(v) for v in self.root_dse().get("namingContexts", [])]

    def schema(self) -> Schema:
        """The server's own schema, from its subschema subentry."""
        where = text((self.root_dse().get("subschemaSubentry") or [b"cn=Subschema"])[0])
        raw = self.read(where, ["attributeTypes", "objectClasses"], "(objectClass=subschema)") or {}
        schema = Schema.from_definitions(_values(raw, "attributeTypes"), _values(raw, "objectClasses"))
        if not (schema.attributes and schema.classes):
            raise Unreachable(f"cannot read the schema of {self.url} from {where}")
        return schema

    def entries(self, base: str, attributes: List[str], page_size: int = 500) -> Iterator[dict]:
        """Every entry at and below `base`, page by page; raises SearchFailed when the server ends
        the search with an error, after yielding what it sent.

        Each page's result is kept before its entries are yielded: the caller may read entries by
        name on this connection meanwhile (`read`), and the answer to such a read (noSuchObject for
        a DN that a reference names) must not be taken for the end of this search. Referrals are
        never followed: the server a tenant's data names is not one this audit connects to."""
        import ldap3
        from ldap3.core.exceptions import LDAPException

        count = 0
        cookie = None
        while True:
            try:
                self.connection.search(
                    base,
                    "(objectClass=*)",
                    ldap3.SUBTREE,
                    dereference_aliases=ldap3.DEREF_NEVER,
                    attributes=attributes,
                    paged_size=page_size,
                    paged_cookie=cookie,
                )
            except LDAPException as error:
                raise SearchFailed(-1, type(error).__name__, str(error), count) from None
            result = dict(self.connection.result or {})
            page = list(self.connection.response or [])
            for item in page:
                if item.get("type") == "searchResEntry":
                    count += 1
                    yield item
            if result.get("result"):
                raise SearchFailed(
                    result["result"], result.get("description", ""), result.get("message", ""), count
                )
            previous, cookie = cookie, _paging_cookie(result)
            if not cookie:
                return
            if cookie == previous and not any(item.get("type") == "searchResEntry" for item in page):
                # A server that hands back the same cookie without entries would page forever.
                raise SearchFailed(-1, "paging", "the server repeats its paging cookie", count)


def _paging_cookie(result: dict) -> bytes | None:
    """The cookie of the simple paged results control (RFC 2696) in a search result: None at the end."""
    control = (result.get("controls") or {}).get(PAGED_RESULTS) or {}
    return (control.get("value") or {}).get("cookie") or None


def text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _values(raw: Dict[str, list], name: str) -> List[str]:
    for key, values in raw.items():
        if key.lower() == name.lower():
            return [text(v) for v in values]
    return []
