"""Add-ons plug in exactly like the built-ins: a third-party distribution's checker, report format and
command load through the same entry points (`fsaudit.checks`, `fsaudit.renderers`, `fsaudit.commands`)."""

import pytest

from fixtures.addon import NAME, VERSION, make_addon
from tests.conftest import fsaudit


@pytest.fixture
def addon(tmp_path):
    return {"PYTHONPATH": str(make_addon(tmp_path / "site"))}


def test_an_add_on_checker_is_listed_with_its_distribution(addon, tmp_path):
    run = fsaudit("checks", "--root", tmp_path, env=addon)
    assert run.code == 0, run.stderr
    assert f"from {NAME} {VERSION}" in run.stdout
    assert "Finds the file /example-damage" in run.stdout


def test_an_add_on_checker_runs_and_its_declarations_reach_the_report(addon, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "example-damage").write_text("x")
    run = fsaudit("audit", "--root", root, "--check", "example", "--format", "json", env=addon)
    assert run.code == 2, run.stderr
    check = run.check("example")
    assert run.codes("example") == {"example-damage"}
    assert (check["covers"], check["category"]) == ("example files", "applications")


def test_an_add_on_report_format_renders_the_report(addon, tmp_path):
    run = fsaudit("audit", "--root", tmp_path, "--check", "example", "--format", "summary", env=addon)
    assert run.code == 0, run.stderr
    assert run.stdout == "example=ok\n"


def test_an_add_on_command_is_a_command_of_fsaudit(addon):
    run = fsaudit("example", "hello", env=addon)
    assert run.code == 0, run.stderr
    assert run.stdout == "example says hello\n"
    assert "example" in fsaudit("--help", env=addon).stdout


def test_the_builtin_formats_and_commands_are_registered_like_an_add_on_s():
    from fsaudit.registry import COMMANDS, RENDERERS, registered

    formats = {item.point.name: item.distribution for item in registered(RENDERERS)}
    assert {"text", "json", "html", "nagios", "prometheus"} <= set(formats)
    assert formats["text"] == "fsaudit"
    commands = {item.point.name: item.point.value for item in registered(COMMANDS)}
    assert commands["baseline"] == "fsaudit_checks.baseline.command:baseline"


def test_a_broken_add_on_is_said_and_the_rest_works(tmp_path):
    site = make_addon(tmp_path / "site")
    (site / "fsaudit_example_addon" / "__init__.py").write_text("raise ImportError('broken add-on')\n")
    env = {"PYTHONPATH": str(site)}
    run = fsaudit("checks", "--root", tmp_path, env=env)
    assert run.code == 0 and "ImportError: broken add-on" in run.stdout
    run = fsaudit("audit", "--root", tmp_path, "--check", "example", "--format", "json", env=env)
    assert run.code == 3 and "broken add-on" in run.check("example")["reason"]
    assert fsaudit("example", "x", env=env).code == 3
    assert fsaudit("audit", "--root", tmp_path, "--format", "summary", env=env).code == 3
