"""The ldap checker against real, throwaway slapd servers (back-mdb, loopback, made by the test)."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from fixtures.corrupt import zero_block
from fixtures.ldap import (
    P_LEAF,
    P_OVERFLOW,
    PASSWORD,
    ROOTDN,
    SUFFIX,
    Slapd,
    directory_ldif,
    entry,
    free_port,
    lmdb_pages,
    person,
    write_password,
)
from tests.conftest import fsaudit, require_program


@pytest.fixture
def servers(tmp_path):
    """Make slapd servers in tmp_path; every one is stopped at the end, whatever happened."""
    for name, package in (("slapd", "slapd"), ("slapadd", "slapd"), ("ldapadd", "ldap-utils")):
        require_program(name, package)
    made = []

    def make(name="server", **options) -> Slapd:
        server = Slapd(tmp_path / name, **options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def audit(server: Slapd, *sets: str, password: str = PASSWORD, slapcat: bool = True):
    options = [f"ldap.url={server.url}", f"ldap.bind_dn={ROOTDN}"]
    options.append(f"ldap.password_file={write_password(server.directory, password)}")
    if slapcat:
        options.append(f"ldap.slapd_config={server.config}")
    args = ["audit", "--check", "ldap", "--format", "json"]
    for option in [*options, *sets]:
        args += ["--set", option]
    return fsaudit(*args)


def test_clean_directory_is_ok(servers):
    server = servers()
    server.slapadd(directory_ldif())
    server.start()
    run = audit(server)
    check = run.check("ldap")
    assert run.code == 0, run.stdout
    assert check["status"] == "ok"
    assert check["findings"] == []
    assert check["stats"]["entries_read"] == 10
    assert check["stats"]["slapcat_entries"] == 10
    assert check["stats"]["references_checked"] == 9


def test_referrals_and_subentries_left_out_of_searches_are_not_damage(servers):
    server = servers()
    extra = entry(
        f"ou=elsewhere,{SUFFIX}",
        "objectClass: referral",
        "objectClass: extensibleObject",
        "ou: elsewhere",
        "ref: ldap://ldap.example.org/ou=elsewhere,dc=example,dc=org",
    ) + entry(f"cn=policy,{SUFFIX}", "objectClass: subentry", "cn: policy", "subtreeSpecification: {}")
    # A reference to the referral object: the entry exists though searches do not return it.
    extra += person(5, f"seeAlso: ou=elsewhere,{SUFFIX}")
    server.slapadd(directory_ldif() + extra)
    server.start()
    run = audit(server)
    check = run.check("ldap")
    assert run.code == 0, run.stdout
    assert check["stats"]["entries_read"] == 11
    assert check["stats"]["slapcat_entries"] == 13
    assert check["stats"]["entries_hidden_from_searches"] == 2
    assert check["stats"]["hidden_entries_referenced"] == 1


def test_a_database_mounted_below_the_suffix_is_counted_with_it(servers):
    sub = f"ou=sub,{SUFFIX}"
    server = servers(subordinate=sub)
    server.slapadd(directory_ldif())
    server.slapadd(
        entry(sub, "objectClass: organizationalUnit", "ou: sub")
        + entry(
            f"cn=role,{sub}",
            "objectClass: organizationalRole",
            "cn: role",
            f"roleOccupant: uid=user1,ou=people,{SUFFIX}",
        ),
        suffix=sub,
    )
    server.start()
    run = audit(server)
    check = run.check("ldap")
    assert run.code == 0, run.stdout
    assert check["stats"]["entries_read"] == check["stats"]["slapcat_entries"] == 12
    assert check["stats"]["references_checked"] == 10


def test_schema_violations_from_slapadd_without_checks(servers):
    server = servers()
    uuid = "0b6c3c8e-1111-4a4a-9a9a-000000000001"
    broken = [
        # person without its required sn
        entry(f"uid=nosn,ou=people,{SUFFIX}", "objectClass: inetOrgPerson", "uid: nosn", "cn: No Sn"),
        # uidNumber needs posixAccount
        person(10, "uidNumber: 1010"),
        # two unrelated structural classes
        entry(
            f"cn=both,ou=people,{SUFFIX}",
            "objectClass: person",
            "objectClass: organizationalRole",
            "cn: both",
            "sn: both",
        ),
        # displayName is single-valued
        person(11, "displayName: one", "displayName: two"),
        # two entries with one entryUUID
        person(12, f"entryUUID: {uuid}"),
        person(13, f"entryUUID: {uuid}"),
        # extensibleObject allows any attribute: not a finding
        entry(
            f"cn=ext,ou=people,{SUFFIX}",
            "objectClass: device",
            "objectClass: extensibleObject",
            "cn: ext",
            "mail: ext@example.com",
        ),
    ]
    server.slapadd(directory_ldif() + "".join(broken), skip_schema=True)
    server.start()
    run = audit(server)
    assert run.code == 2, run.stdout
    found = {(f["code"], f["subject"], f["details"].get("attribute")) for f in run.findings("ldap")}
    people = f"ou=people,{SUFFIX}"
    assert ("missing-required-attribute", f"uid=nosn,{people}", "sn") in found
    assert ("attribute-not-allowed", f"uid=user10,{people}", "uidNumber") in found
    assert ("structural-class-conflict", f"cn=both,{people}", "objectClass") in found
    assert ("single-value-violated", f"uid=user11,{people}", "displayName") in found
    duplicates = run.findings("ldap", "duplicate-uuid")
    assert len(duplicates) == 1
    assert sorted(duplicates[0]["details"]["dns"]) == [f"uid=user12,{people}", f"uid=user13,{people}"]
    assert not any(subject == f"cn=ext,{people}" for _, subject, _ in found)
    for finding in run.findings("ldap"):
        assert finding["severity"] == "critical" and finding["advice"]


def test_deleted_entries_leave_dangling_references_and_orphans(servers):
    server = servers()
    orphan = entry(f"uid=lost,ou=gone,{SUFFIX}", "objectClass: account", "uid: lost")
    server.slapadd(directory_ldif(), skip_schema=True)
    server.slapadd(orphan, skip_schema=True, orphans=True)
    server.start()
    # No refint overlay: deleting user3 leaves its group membership and nothing else fixes it.
    server.ldap("ldapdelete", "", f"uid=user3,ou=people,{SUFFIX}")
    run = audit(server)
    assert run.code == 2, run.stdout
    dangling = {(f["subject"], f["details"]["attribute"]) for f in run.findings("ldap", "dangling-reference")}
    assert dangling == {(f"cn=group1,ou=groups,{SUFFIX}", "member")}
    assert all(
        f["details"]["target"] == f"uid=user3,ou=people,{SUFFIX}"
        for f in run.findings("ldap", "dangling-reference")
    )
    orphans = run.findings("ldap", "orphan-entry")
    assert [f["subject"] for f in orphans] == [f"uid=lost,ou=gone,{SUFFIX}"]
    assert orphans[0]["details"]["parent"] == f"ou=gone,{SUFFIX}"


def test_a_lost_naming_context_entry_is_damage_a_wrong_base_is_not(servers):
    server = servers()
    # Everything but the suffix entry itself.
    server.slapadd(directory_ldif().split("\n\n", 1)[1], orphans=True)
    server.start()
    run = audit(server)
    assert run.code == 2, run.stdout
    [lost] = run.findings("ldap", "search-failed")
    assert lost["subject"] == SUFFIX and "no entry there" in lost["message"]
    run = audit(server, f"ldap.base=ou=nowhere,{SUFFIX}", slapcat=False)
    check = run.check("ldap")
    assert run.code == 3, run.stdout
    assert check["findings"] == [] and "does not exist" in check["reason"]


def test_dangling_references_a_reused_entry_uuid_and_an_orphan_are_all_named(servers):
    """Issue 14.7: reading by name a DN that does not exist answers noSuchObject, which is the answer
    (the reference dangles), not the end of the second read; the entries sharing an entryUUID are
    named. Pages of two entries interleave those reads with the paged search."""
    server = servers()
    uuid = "0b6c3c8e-2222-4a4a-9a9a-000000000002"
    server.slapadd(directory_ldif(people=6), skip_schema=True)
    server.slapadd(
        person(7, f"entryUUID: {uuid}")
        + person(8, f"entryUUID: {uuid}")
        + entry(f"uid=lost,ou=gone,{SUFFIX}", "objectClass: account", "uid: lost"),
        skip_schema=True,
        orphans=True,
    )
    server.start()
    server.ldap("ldapdelete", "", f"uid=user3,ou=people,{SUFFIX}")
    server.ldap("ldapdelete", "", f"uid=user4,ou=people,{SUFFIX}")
    for page_size in (500, 2):
        run = audit(server, f"ldap.page_size={page_size}", slapcat=False)
        check = run.check("ldap")
        assert run.code == 2, run.stdout
        assert not check["reason"], check["reason"]  # nothing left unverified
        [duplicate] = run.findings("ldap", "duplicate-uuid")
        people = f"ou=people,{SUFFIX}"
        assert sorted(duplicate["details"]["dns"]) == [f"uid=user7,{people}", f"uid=user8,{people}"]
        assert duplicate["severity"] == "critical"
        dangling = {
            (f["subject"], f["details"]["target"]) for f in run.findings("ldap", "dangling-reference")
        }
        assert dangling == {
            (f"cn=group1,ou=groups,{SUFFIX}", f"uid=user3,{people}"),
            (f"cn=group0,ou=groups,{SUFFIX}", f"uid=user4,{people}"),
        }
        assert [f["subject"] for f in run.findings("ldap", "orphan-entry")] == [f"uid=lost,ou=gone,{SUFFIX}"]


def test_a_base_dn_is_never_split_at_its_commas(servers, tmp_path):
    """Issue 14.6: `dc=example,dc=com` is one base, through --set and through the config file (a TOML
    string or array); two bases are two --set or two array items."""
    org = "dc=example,dc=org"
    server = servers(other_suffix=org)
    server.slapadd(directory_ldif())
    server.slapadd(
        entry(org, "objectClass: dcObject", "objectClass: organization", "dc: example", "o: Org")
        + entry(
            f"cn=staff,{org}",
            "objectClass: groupOfNames",
            "cn: staff",
            f"member: uid=user1,ou=people,{SUFFIX}",
        ),
        suffix=org,
    )
    server.start()

    run = audit(server, f"ldap.base={SUFFIX}")
    check = run.check("ldap")
    assert run.code == 0, run.stdout
    assert check["stats"]["entries_read"] == check["stats"]["slapcat_entries"] == 10

    both = audit(server, f"ldap.base={SUFFIX}", f"ldap.base={org}", slapcat=False)
    assert both.code == 0, both.stdout
    assert both.check("ldap")["stats"]["entries_read"] == 12
    assert both.check("ldap")["stats"]["references_checked"] == 10

    password = write_password(server.directory)
    common = f'url = "{server.url}"\nbind_dn = "{ROOTDN}"\npassword_file = "{password}"\nslapcat = false\n'
    for bases, entries in ((f'"{SUFFIX}"', 10), (f'["{SUFFIX}"]', 10), (f'["{SUFFIX}", "{org}"]', 12)):
        config = tmp_path / "fsaudit.toml"
        config.write_text(f"[checks.ldap]\n{common}base = {bases}\n")
        run = fsaudit("audit", "--check", "ldap", "--format", "json", "--config", config)
        assert run.code == 0, (bases, run.stdout)
        assert run.check("ldap")["stats"]["entries_read"] == entries


def test_references_between_naming_contexts(servers):
    org = "dc=example,dc=org"
    server = servers(other_suffix=org)
    server.slapadd(directory_ldif())
    staff = [f"member: uid=user{n},ou=people,{SUFFIX}" for n in (1, 3)]
    server.slapadd(
        entry(org, "objectClass: dcObject", "objectClass: organization", "dc: example", "o: Org")
        + entry(f"cn=staff,{org}", "objectClass: groupOfNames", "cn: staff", *staff),
        suffix=org,
    )
    server.start()
    run = audit(server, slapcat=False)
    assert run.code == 0, run.stdout
    assert run.check("ldap")["stats"]["references_checked"] == 11
    server.ldap("ldapdelete", "", f"uid=user3,ou=people,{SUFFIX}")
    run = audit(server, slapcat=False)
    assert run.code == 2, run.stdout
    dangling = {f["subject"] for f in run.findings("ldap", "dangling-reference")}
    assert dangling == {f"cn=group1,ou=groups,{SUFFIX}", f"cn=staff,{org}"}


def test_damaged_lmdb_page_the_server_skips_is_found_by_slapcat(servers):
    server = servers()
    # Groups with many members are stored on LMDB overflow pages.
    server.slapadd(directory_ldif(people=300, groups=3))
    pages = lmdb_pages(server.data / "data.mdb", P_OVERFLOW)
    assert pages, "no overflow page to damage"
    zero_block(server.data / "data.mdb", pages[0] * 4096, 4096)
    server.start()
    run = audit(server)
    assert run.code == 2, run.stdout
    codes = run.codes("ldap")
    assert "entry-count-differs" in codes
    [count] = run.findings("ldap", "entry-count-differs")
    assert count["details"]["slapcat"] == 306
    assert count["details"]["served"] < 306
    assert {f["subject"] for f in run.findings("ldap", "entry-not-served")} <= {
        f"cn=group{g},ou=groups,{SUFFIX}" for g in range(3)
    }
    assert run.findings("ldap", "entry-not-served")


def test_damaged_lmdb_page_the_server_fails_on_is_a_search_failure(servers):
    server = servers()
    server.slapadd(directory_ldif(people=30, groups=3))
    pages = lmdb_pages(server.data / "data.mdb", P_LEAF, b"inetOrgPerson")
    assert len(pages) > 2, "no id2entry page to damage"
    zero_block(server.data / "data.mdb", pages[1] * 4096, 4096)
    server.start()
    run = audit(server)
    assert run.code == 2, run.stdout
    [failed] = run.findings("ldap", "search-failed")
    assert failed["details"]["result"] == 80
    assert 0 < failed["details"]["entries_read"] < 36
    # What was read is not proof of anything: the check says it could not see everything.
    assert "not checked" in run.check("ldap")["reason"]


def test_ldapi_with_sasl_external_as_root(servers):
    server = servers(ldapi=True)
    server.slapadd(directory_ldif())
    server.start()
    run = fsaudit(
        "audit",
        "--check",
        "ldap",
        "--format",
        "json",
        "--set",
        f"ldap.url={server.ldapi_url}",
        "--set",
        f"ldap.slapd_config={server.config}",
    )
    check = run.check("ldap")
    assert run.code == 0, run.stdout
    assert check["stats"]["entries_read"] == check["stats"]["slapcat_entries"] == 10


def test_ldaps_verifies_the_server_certificate(servers):
    require_program("openssl", "openssl")
    server = servers(tls=True)
    server.slapadd(directory_ldif())
    server.start()
    _wait_for(lambda: _listening(server.ldaps_url))
    run = audit(server, f"ldap.url={server.ldaps_url}", f"ldap.ca_file={server.certificate}", slapcat=False)
    assert run.code == 0, run.stdout
    assert run.check("ldap")["stats"]["entries_read"] == 10
    # Without its CA the self-signed certificate is not trusted: unknown, not damage.
    run = audit(server, f"ldap.url={server.ldaps_url}", slapcat=False)
    check = run.check("ldap")
    assert run.code == 3, run.stdout
    assert check["findings"] == [] and "cannot connect" in check["reason"]


def test_without_url_under_root_it_says_how_to_point_it_at_a_server(tmp_path):
    run = fsaudit("audit", "--root", tmp_path, "--check", "ldap", "--format", "json")
    check = run.check("ldap")
    assert check["status"] == "skipped"
    assert "ldap.url" in check["reason"]


def test_a_size_limit_is_unknown_not_damage(servers):
    server = servers(size_limit=4)
    reader = f"uid=user1,ou=people,{SUFFIX}"
    server.slapadd(directory_ldif().replace("cn: User 1\n", f"cn: User 1\nuserPassword: {PASSWORD}\n"))
    server.start()
    run = audit(server, f"ldap.bind_dn={reader}", slapcat=False)
    check = run.check("ldap")
    assert run.code == 3, run.stdout
    assert check["findings"] == []
    assert "sizeLimitExceeded" in check["reason"] and "limits" in check["reason"]


def test_wrong_password_is_unknown_not_damage(servers):
    server = servers()
    server.slapadd(directory_ldif())
    server.start()
    run = audit(server, password="not-the-password")
    check = run.check("ldap")
    assert run.code == 3, run.stdout
    assert check["status"] == "unknown"
    assert check["findings"] == []
    assert "wrong bind DN or password" in check["reason"]
    assert "not-the-password" not in run.stdout and "not-the-password" not in run.stderr


def test_unreachable_server_is_unknown_not_damage(tmp_path):
    url = f"ldap://127.0.0.1:{free_port()}"
    password = write_password(tmp_path)
    run = fsaudit(
        "audit",
        "--check",
        "ldap",
        "--format",
        "json",
        "--set",
        f"ldap.url={url}",
        "--set",
        f"ldap.bind_dn={ROOTDN}",
        "--set",
        f"ldap.password_file={password}",
        "--set",
        "ldap.timeout=3",
    )
    check = run.check("ldap")
    assert run.code == 3, run.stdout
    assert check["findings"] == []
    assert "cannot connect" in check["reason"]
    assert PASSWORD not in run.stdout


@pytest.mark.parametrize("kind", ["missing", "fifo"])
def test_unreadable_password_file_is_unknown(tmp_path, kind):
    path = tmp_path / "password"
    if kind == "fifo":
        os.mkfifo(path)
    run = fsaudit(
        "audit",
        "--check",
        "ldap",
        "--format",
        "json",
        "--set",
        f"ldap.url=ldap://127.0.0.1:{free_port()}",
        "--set",
        f"ldap.bind_dn={ROOTDN}",
        "--set",
        f"ldap.password_file={path}",
        timeout=60,
    )
    check = run.check("ldap")
    assert run.code == 3, run.stdout
    assert "cannot read ldap.password_file" in check["reason"]


def test_provider_restored_from_an_old_copy_is_found_by_its_replica(servers):
    provider = servers("provider", server_id=1)
    provider.slapadd(directory_ldif())
    old = provider.directory / "old-data"
    shutil.copytree(provider.data, old)
    provider.start()
    provider.ldap("ldapadd", person(20) + person(21))
    provider.ldap(
        "ldapmodify", f"dn: uid=user1,ou=people,{SUFFIX}\nchangetype: modify\nreplace: sn\nsn: new\n"
    )
    consumer = servers("consumer", provider_url=provider.url, server_id=2)
    consumer.start()
    _wait_for(lambda: consumer.count() == 12)
    run = audit(provider, f"ldap.replica_urls={consumer.url}", slapcat=False)
    assert run.code == 0, run.stdout
    assert run.check("ldap")["stats"]["replica_entries_compared"] == 12
    # The provider's disk goes back to the old copy: its last writes are lost; the replica keeps them.
    provider.stop()
    shutil.rmtree(provider.data)
    shutil.copytree(old, provider.data)
    provider.start()
    run = audit(provider, f"ldap.replica_urls={consumer.url}", slapcat=False)
    assert run.code == 2, run.stdout
    assert "provider-behind" in run.codes("ldap")
    missing = {f["subject"] for f in run.findings("ldap", "entry-missing-on-provider")}
    assert missing == {f"uid=user20,ou=people,{SUFFIX}", f"uid=user21,ou=people,{SUFFIX}"}
    newer = {f["subject"] for f in run.findings("ldap", "entry-newer-on-replica")}
    assert newer == {f"uid=user1,ou=people,{SUFFIX}"}
    # New writes on the rolled-back provider hide it in contextCSN, not in the entries; the replica
    # has not fetched them yet (lag, a warning).
    provider.ldap("ldapadd", person(30))
    provider.ldap(
        "ldapmodify", f"dn: uid=user2,ou=people,{SUFFIX}\nchangetype: modify\nreplace: sn\nsn: newer\n"
    )
    run = audit(provider, f"ldap.replica_urls={consumer.url}", slapcat=False)
    assert run.code == 2, run.stdout
    assert {"entry-missing-on-provider", "entry-newer-on-replica", "replica-behind"} <= run.codes("ldap")
    [lagging] = run.findings("ldap", "entry-missing-on-replica")
    assert lagging["subject"] == f"uid=user30,ou=people,{SUFFIX}"
    [older] = run.findings("ldap", "entry-older-on-replica")
    assert older["subject"] == f"uid=user2,ou=people,{SUFFIX}"
    assert {lagging["severity"], older["severity"]} == {"warning"}


def _listening(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def _wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the consumer may not answer yet
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for replication")
