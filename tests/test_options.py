"""Checker options: parsed once, DNs and URLs never split at their commas (passwords on the command
line: tests/security/test_command_line_secrets.py)."""

from __future__ import annotations

from fsaudit.checker import Checker, Option, Settings
from fsaudit.config import merge_options, parse_sets


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
