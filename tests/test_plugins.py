"""Add-ons plug in exactly like the built-ins: a third-party distribution's checker, report format and
command load through the same entry points (`fsaudit.checks`, `fsaudit.renderers`, `fsaudit.commands`)."""

import os
import sys
import zipfile

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


def _as_importlib_reads_them(path):
    from importlib import metadata

    from fsaudit.registry import GROUPS

    found = {group: [] for group in GROUPS}
    for dist in metadata.distributions(path=path):
        for point in dist.entry_points:
            if point.group in found:
                found[point.group].append(
                    (point.name, point.value, dist.metadata["Name"], dist.metadata["Version"])
                )
    return found


def _as_fsaudit_reads_them(path, monkeypatch):
    from fsaudit import registry

    monkeypatch.setattr(sys, "path", path)
    registry._registered.cache_clear()
    try:
        return {
            group: [
                (r.point.name, r.point.value, r.distribution, r.version) for r in registry.registered(group)
            ]
            for group in registry.GROUPS
        }
    finally:
        registry._registered.cache_clear()


def test_the_plug_ins_are_found_as_importlib_metadata_finds_them(tmp_path, monkeypatch):
    # fsaudit reads the dist-info directories itself (importlib.metadata took 20 ms of every start):
    # on this interpreter's path, an add-on's site, an egg, and a zip on the path (the fleet's
    # zipapp, left to importlib.metadata), it finds the same plug-ins in the same order, with their
    # distribution.
    site = make_addon(tmp_path / "site")
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(
            "zipped_addon-3.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped-addon\nVersion: 3.0\n"
        )
        zipped.writestr(
            "zipped_addon-3.0.dist-info/entry_points.txt", "[fsaudit.checks]\nzipped = zipped_addon:Checker\n"
        )
    egg = tmp_path / "eggs" / "egged_addon-0.5-py3.11.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: egged-addon\nVersion: 0.5\n")
    (egg / "EGG-INFO" / "entry_points.txt").write_text("[fsaudit.renderers]\negged = egged_addon:render\n")
    path = [str(site), str(archive), str(egg), *sys.path]
    fsaudit_reads = _as_fsaudit_reads_them(path, monkeypatch)
    assert fsaudit_reads == _as_importlib_reads_them(path)
    checks = {name: (value, dist) for name, value, dist, _ in fsaudit_reads["fsaudit.checks"]}
    assert checks["example"][1] == NAME and checks["zipped"] == ("zipped_addon:Checker", "zipped-addon")
    assert checks["debian"] == ("fsaudit_checks.debian:DebianChecker", "fsaudit")
    assert ("egged", "egged_addon:render", "egged-addon", "0.5") in fsaudit_reads["fsaudit.renderers"]


def test_an_entry_points_file_is_read_line_by_line_and_loads_as_importlib_loads_it():
    from fsaudit.registry import EntryPoint, _entry_points, _header_value

    text = (
        "# a comment\n[console_scripts]\nfsaudit = fsaudit.cli:run\n\n[fsaudit.checks]\n"
        "; another comment\n  spaced  =  fsaudit.registry : EntryPoint  [extra]\nno equals sign here\n"
        "= fsaudit.registry:nameless\n[fsaudit.renderers]\njoined=os.path:join\n"
    )
    points = _entry_points(text)
    assert points == [
        EntryPoint("spaced", "fsaudit.registry : EntryPoint  [extra]", "fsaudit.checks"),
        EntryPoint("joined", "os.path:join", "fsaudit.renderers"),
    ]
    assert points[0].load() is EntryPoint and points[1].load() is os.path.join
    with pytest.raises(ValueError):
        EntryPoint("bad", "not a value!", "fsaudit.checks").load()
    headers = "Metadata-Version: 2.1\nname: Some-Thing\nVersion: 1.0\n\nName: in the body\n"
    assert (
        _header_value(headers, "Name"),
        _header_value(headers, "Version"),
        _header_value(headers, "Summary"),
    ) == (
        "Some-Thing",
        "1.0",
        "",
    )
