"""Pure logic of the ldap checker: DN normal form, hash sets, CSNs, schema rules, slapcat's LDIF."""

from __future__ import annotations

import io

import pytest

from fsaudit.target import Target
from fsaudit_checks.ldap import slapcat
from fsaudit_checks.ldap.dn import BadDn, HashSet, normalize_dn, parent_of, parent_text, reference_dn, within
from fsaudit_checks.ldap.replica import context_csns, csn_key, parse_csn
from fsaudit_checks.ldap.schema import Schema
from fsaudit_checks.ldap.slapcat import _dns, discover_ldapi, find_config

DN = "1.3.6.1.4.1.1466.115.121.1.12"
TEXT = "1.3.6.1.4.1.1466.115.121.1.15"
ATTRIBUTES = [
    "( 2.5.4.0 NAME 'objectClass' SYNTAX 1.3.6.1.4.1.1466.115.121.1.38 )",
    f"( 2.5.4.41 NAME 'name' SYNTAX {TEXT} )",
    "( 2.5.4.3 NAME ( 'cn' 'commonName' ) SUP name )",
    "( 2.5.4.4 NAME ( 'sn' 'surname' ) SUP name )",
    "( 2.5.4.11 NAME ( 'ou' 'organizationalUnitName' ) SUP name )",
    f"( 2.16.840.1.113730.3.1.241 NAME 'displayName' SYNTAX {TEXT} SINGLE-VALUE )",
    f"( 2.5.4.49 NAME 'distinguishedName' SYNTAX {DN} )",
    "( 2.5.4.31 NAME 'member' SUP distinguishedName )",
    f"( 0.9.2342.19200300.100.1.10 NAME 'manager' SYNTAX {DN} )",
    f"( 0.9.2342.19200300.100.1.3 NAME 'mail' SYNTAX {TEXT} )",
    "( 1.3.6.1.1.16.4 NAME 'entryUUID' SYNTAX 1.3.6.1.1.16.1 SINGLE-VALUE USAGE directoryOperation )",
    f"( 2.5.18.3 NAME 'creatorsName' SYNTAX {DN} SINGLE-VALUE USAGE directoryOperation )",
]
CLASSES = [
    "( 2.5.6.0 NAME 'top' ABSTRACT MUST objectClass )",
    "( 2.5.6.6 NAME 'person' SUP top STRUCTURAL MUST ( sn $ cn ) MAY displayName )",
    "( 2.5.6.7 NAME 'organizationalPerson' SUP person STRUCTURAL MAY ( ou $ manager ) )",
    "( 2.5.6.5 NAME 'organizationalUnit' SUP top STRUCTURAL MUST ou )",
    "( 2.5.6.9 NAME 'groupOfNames' SUP top STRUCTURAL MUST ( member $ cn ) )",
    "( 1.3.6.1.4.1.1466.101.120.111 NAME 'extensibleObject' SUP top AUXILIARY )",
    "( 1.2.3.4 NAME 'mailbox' SUP top AUXILIARY MAY mail )",
]


@pytest.fixture(scope="module")
def schema():
    return Schema.from_definitions(ATTRIBUTES, CLASSES)


def codes(problems):
    return sorted((p.code, p.attribute) for p in problems)


def test_normal_form_ignores_case_spaces_escapes_and_aliases(schema):
    assert (
        normalize_dn("CN=Jane  Doe , ou=People,DC=Example", schema.aliases)
        == "cn=jane doe,ou=people,dc=example"
    )
    assert normalize_dn("commonName=x,ou=a", schema.aliases) == normalize_dn("cn=X,OU=A", schema.aliases)
    assert normalize_dn(r"cn=a\2Cb,o=x") == normalize_dn(r"cn=a\,b,o=x") == r"cn=a\2cb,o=x"
    assert normalize_dn("cn=b+sn=a,o=x") == normalize_dn("sn=a+cn=b,o=x")
    assert normalize_dn("cn=Café,o=x") == normalize_dn(r"cn=Caf\C3\A9,o=x") == "cn=café,o=x"
    assert normalize_dn("") == ""
    for bad in ("not a dn", "cn=x,", "=x"):
        with pytest.raises(BadDn):
            normalize_dn(bad)


def test_parents_scopes_and_references():
    assert parent_of(normalize_dn(r"cn=a\,b,ou=p,o=x")) == "ou=p,o=x"
    assert parent_text(r"cn=a\,b,ou=P,o=x") == "ou=P,o=x"
    assert parent_text("o=x") == ""
    assert within("cn=a,o=x", "o=x") and within("o=x", "o=x") and not within("o=xx", "o=x")
    assert reference_dn("uid=a,o=x#'0101'B") == "uid=a,o=x"


def test_hash_set_lookups_duplicates_and_differences():
    dns = HashSet()
    dns.update([5, 3, 9, 3])
    assert 3 in dns and 9 in dns and 4 not in dns
    assert dns.duplicates() == {3}
    wanted = HashSet()
    wanted.update([3, 4, 4, 10])
    assert wanted.missing_from(dns) == {4, 10}


def test_csns_order_and_per_server_id():
    old = "20240101120000.000001Z#000000#001#000000"
    new = "20240101120000.000002Z#000000#001#000000"
    assert parse_csn(old) == ("20240101120000.000001", 0, 1)
    assert csn_key(old) < csn_key(new)
    assert csn_key("20240101120000.000001Z#000002#001#000000") > csn_key(old)
    assert csn_key("garbage") == 0
    assert context_csns([old.encode(), new, "20230101000000.000000Z#000000#002#000000", "bad"]) == {
        1: new,
        2: "20230101000000.000000Z#000000#002#000000",
    }


def test_a_valid_entry_has_no_problem(schema):
    entry = {
        "objectClass": [b"top", b"person", b"organizationalPerson", b"mailbox"],
        "cn": [b"a"],
        "sn": [b"b"],
        "ou": [b"x"],
        "mail": [b"a@x", b"b@x"],
        "cn;lang-en": [b"A"],
    }
    assert schema.check(entry) == []


def test_schema_rules(schema):
    assert codes(schema.check({"objectClass": [b"person"], "cn": [b"a"]})) == [
        ("missing-required-attribute", "sn")
    ]
    assert codes(schema.check({"objectClass": [b"person"], "cn": [b"a"], "sn": [b"b"], "mail": [b"m"]})) == [
        ("attribute-not-allowed", "mail")
    ]
    assert codes(
        schema.check(
            {"objectClass": [b"person", b"organizationalUnit"], "cn": [b"a"], "sn": [b"b"], "ou": [b"o"]}
        )
    ) == [("structural-class-conflict", "objectClass")]
    assert codes(schema.check({"objectClass": [b"mailbox"], "mail": [b"m"]})) == [
        ("no-structural-class", "objectClass")
    ]
    assert codes(
        schema.check({"objectClass": [b"person"], "cn": [b"a"], "sn": [b"b"], "displayName": [b"1", b"2"]})
    ) == [("single-value-violated", "displayName")]
    assert codes(schema.check({"objectClass": [b"person", b"nosuch"], "cn": [b"a"], "sn": [b"b"]})) == [
        ("unknown-object-class", "objectClass")
    ]
    assert codes(schema.check({"objectClass": [b"person"], "cn": [b"a"], "sn": [b"b"], "xyz": [b"1"]})) == [
        ("unknown-attribute", "xyz")
    ]


def test_extensible_object_allows_any_attribute_and_operational_ones_are_free(schema):
    entry = {"objectClass": [b"organizationalUnit", b"extensibleObject"], "ou": [b"o"], "mail": [b"m"]}
    assert schema.check(entry) == []
    entry = {"objectClass": [b"organizationalUnit"], "ou": [b"o"], "creatorsName": [b"cn=x"]}
    assert schema.check(entry) == []


def test_dn_valued_attributes_follow_supertypes(schema):
    assert schema.dn_valued() == {"distinguishedname", "member", "manager"}


def test_slapcat_ldif_dns_folded_and_base64():
    ldif = (
        b"dn: dc=example,dc=com\nobjectClass: top\n\n"
        b"dn: cn=a very long name that slapcat folded,ou=peo\n ple,dc=example,dc=com\ncn: x\n\n"
        b"dn:: Y249Q2Fmw6ksZGM9ZXhhbXBsZSxkYz1jb20=\ncn: y\n"
    )
    expected = [
        "dc=example,dc=com",
        "cn=a very long name that slapcat folded,ou=people,dc=example,dc=com",
        "cn=Café,dc=example,dc=com",
    ]
    assert list(_dns(io.BytesIO(ldif))) == expected
    for size in (1, 7, 40):
        assert list(_dns(io.BytesIO(ldif), chunk_size=size)) == expected


def test_suffixes_from_slapd_conf_and_slapd_d(tmp_path):
    conf = tmp_path / "etc/ldap/slapd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('database mdb\nsuffix "dc=one,dc=org"\ndatabase mdb\nsuffix dc=two\n')
    target = Target(tmp_path)
    config = find_config(target, "/etc/ldap/slapd.conf")
    assert not config.directory and config.suffixes == ["dc=one,dc=org", "dc=two"]
    folder = tmp_path / "etc/ldap/slapd.d/cn=config"
    folder.mkdir(parents=True)
    (folder / "olcDatabase={1}mdb.ldif").write_text(
        "dn: olcDatabase={1}mdb\nolcSuffix: dc=exa\n mple,dc=com\n"
    )
    (folder / "olcDatabase={2}mdb.ldif").write_text("dn: olcDatabase={2}mdb\nolcSuffix:: ZGM9YmFzZTY0\n")
    config = find_config(target)
    assert config.directory and config.path == "/etc/ldap/slapd.d"
    assert config.suffixes == ["dc=example,dc=com", "dc=base64"]


def test_ldapi_socket_named_by_the_service_settings(tmp_path, monkeypatch):
    socket_path = tmp_path / "slapd.sock"
    socket_path.write_text("")  # stands for the socket: only its existence is tested
    settings = tmp_path / "default-slapd"
    quoted = str(socket_path).replace("/", "%2F")
    settings.write_text(f'# SLAPD_SERVICES="ldapi:///"\nSLAPD_SERVICES="ldap:/// ldapi://{quoted}/"\n')
    monkeypatch.setattr(slapcat, "SERVICE_FILES", (str(settings),))
    assert discover_ldapi(Target("/")) == f"ldapi://{quoted}"


class _PagingServer:
    """A fake ldap3 connection: pages of entries, then (when `stuck`) the same cookie forever."""

    def __init__(self, pages, stuck=False):
        self.pages = list(pages)
        self.stuck = stuck
        self.result = None
        self.response = None
        self.cookies = []

    def search(self, base, where, scope, **options):
        self.cookies.append(options.get("paged_cookie"))
        entries = self.pages.pop(0) if self.pages else []
        self.response = [{"type": "searchResEntry", "dn": dn} for dn in entries]
        more = bool(self.pages) or self.stuck
        control = {"1.2.840.113556.1.4.319": {"value": {"cookie": b"same" if more else b""}}}
        self.result = {"result": 0, "controls": control}
        return True


def test_paged_reads_keep_each_page_result_and_stop_on_a_repeated_cookie():
    """Issue 14.7: a read by name between two pages must not change the search's own result; a
    hostile server repeating its cookie with no entries must not make the audit page forever."""
    from fsaudit_checks.ldap.directory import Directory, SearchFailed

    directory = Directory.__new__(Directory)
    directory.url = "ldap://fake"
    directory.connection = _PagingServer([["a", "b"], ["c"]])
    seen = []
    for item in directory.entries("dc=x", ["*"], page_size=2):
        seen.append(item["dn"])
        directory.connection.result = {"result": 32, "description": "noSuchObject"}  # a read by name
    assert seen == ["a", "b", "c"]

    directory.connection = _PagingServer([["a"]], stuck=True)
    with pytest.raises(SearchFailed) as stopped:
        list(directory.entries("dc=x", ["*"], page_size=2))
    assert stopped.value.entries == 1 and len(directory.connection.cookies) == 2
