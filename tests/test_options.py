"""Checker options: parsed once, DNs and URLs never split at their commas, no password on the command line."""

from __future__ import annotations

import pytest

from fsaudit.checker import Checker, Option, Settings
from fsaudit.config import merge_options, parse_sets
from fsaudit.errors import UsageError
from tests.conftest import fsaudit


class Names(Checker):
    name = "names"
    options = (
        Option("paths", "split at commas", multiple=True),
        Option("bases", "DNs", multiple=True, split=False),
        Option("limit", "a number", kind=int, default=3),
    )


def test_lists_split_at_commas_unless_the_option_holds_dns_or_urls():
    paths, bases = Names.options[0], Names.options[1]
    assert paths.parse(["/a,/b", "/c"]) == ["/a", "/b", "/c"]
    assert bases.parse(["dc=example,dc=org", "dc=example,dc=com"]) == [
        "dc=example,dc=org",
        "dc=example,dc=com",
    ]
    assert bases.parse([["dc=example,dc=org"]]) == ["dc=example,dc=org"]  # a TOML array
    assert bases.parse(["dc=example,dc=org"]) == ["dc=example,dc=org"]  # a TOML string


def test_options_are_parsed_once_from_the_command_line_and_the_config_file():
    config = {"checks": {"names": {"paths": ["/a,b"], "bases": ["dc=example,dc=org"]}}}
    raw = merge_options(config, parse_sets(["names.limit=7"]))
    settings = Names.validate_options(raw["names"])
    assert isinstance(settings, Settings)
    assert settings == {"paths": ["/a,b"], "bases": ["dc=example,dc=org"], "limit": 7}
    # The checker takes the validated settings as they are: a TOML array item is not split later.
    checker = Names(settings)
    assert checker.settings is settings and checker.settings["paths"] == ["/a,b"]
    # Raw values (a test, an add-on's own caller) are still validated.
    assert Names({"limit": ["4"], "bases": "dc=a,dc=b"}).settings == {
        "paths": [],
        "bases": ["dc=a,dc=b"],
        "limit": 4,
    }


@pytest.mark.parametrize(
    "item",
    [
        "postgres.dsn=host=/run/postgresql password=s3cret-value",
        "postgres.dsn=host=/run/postgresql user=u PASSWORD = s3cret-value",
        "postgres.dsn=host=db sslcert=c.pem sslkey=k.pem sslpassword=s3cret-value",
        "postgres.dsn=postgresql://auditor:s3cret-value@db.example/postgres",
        "postgres.dsn=postgresql://db.example/postgres?sslmode=require&password=s3cret-value",
        "ldap.url=ldap://admin:s3cret-value@127.0.0.1:389/",
        "ldap.replica_urls=ldaps://cn=admin:s3cret-value@replica.example",
        "postgres.password=s3cret-value",
        "ldap.bind_password=s3cret-value",
    ],
)
def test_a_password_on_the_command_line_is_refused_and_not_repeated(item):
    with pytest.raises(UsageError) as refused:
        parse_sets([item])
    assert "s3cret-value" not in str(refused.value)
    assert "password_file" in str(refused.value)
    run = fsaudit("audit", "--check", item.split(".")[0], "--format", "json", "--set", item)
    assert run.code == 3 and run.stdout == ""
    assert "password_file" in run.stderr and "s3cret-value" not in run.stderr


@pytest.mark.parametrize(
    "item",
    [
        "postgres.dsn=host=/run/postgresql user=password dbname=passwords",
        "postgres.dsn=postgresql://auditor@db.example:5432/postgres",
        "postgres.password_file=/etc/fsaudit/pg-password",
        "ldap.url=ldap://[::1]:389/",
        "ldap.url=ldapi://%2Frun%2Fslapd%2Fldapi",
        "ldap.base=cn=password,dc=example,dc=org",
    ],
)
def test_values_without_a_password_pass(item):
    parse_sets([item])
