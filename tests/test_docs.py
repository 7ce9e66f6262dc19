"""The README documents every built-in checker and every finding code (datasette-style doc test)."""

import re

from fsaudit.registry import load_checkers
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(name: str) -> str:
    match = re.search(rf"^### `{re.escape(name)}`.*?(?=^### |^## |\Z)", README, re.M | re.S)
    assert match, f"README has no section '### `{name}`' under 'Checkers and finding codes'"
    return match.group(0)


def test_every_checker_and_code_is_documented():
    entries = load_checkers()
    assert entries, "no checkers registered"
    for name, entry in entries.items():
        assert entry.checker is not None, entry.error
        section = _section(name)
        for code in entry.checker.codes:
            assert f"`{code}`" in section, f"README section of {name} does not document code {code!r}"


def test_readme_names_the_test_command_that_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "tests/run" in ci
    assert "tests/run" in README
