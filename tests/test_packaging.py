"""Packaging: the wheel builds without setuptools warnings and holds what fsaudit reads at run time
(the HTML template, the JSON Schema, the vendored click for old VMs), the manual page made from the
click commands, no click pin on the control host; shell completion works."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, require_program


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-w", str(out), "-v"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("fsaudit-*.whl")
    return path, done.stdout + done.stderr


def test_the_wheel_builds_without_package_warnings(wheel):
    _, log = wheel
    assert "is absent from the `packages` configuration" not in log


def test_the_wheel_holds_what_fsaudit_reads_at_run_time_and_the_manual_page(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    assert {
        "fsaudit/report/templates/report.html",
        "fsaudit/schema/report.schema.json",
        "fsaudit/fleet/vendor/click-8.1.8-py3-none-any.whl",
        "fsaudit-0.1.0.data/data/share/man/man1/fsaudit.1",
    } <= names


def test_the_control_host_may_run_any_click(wheel):
    path, _ = wheel
    archive = zipfile.ZipFile(path)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    clicks = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: click")]
    assert clicks and all("<" not in line for line in clicks)
    assert "Requires-Dist: ansible-core" in metadata  # the test extra runs the Ansible playbook


def test_the_manual_page_renders_and_covers_every_command(wheel, tmp_path):
    man = require_program("man", "man-db")
    path, _ = wheel
    page = tmp_path / "fsaudit.1"
    page.write_bytes(zipfile.ZipFile(path).read("fsaudit-0.1.0.data/data/share/man/man1/fsaudit.1"))
    done = subprocess.run(
        [man, "--warnings", "-l", str(page)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    for command in (
        "audit",
        "self-check",
        "checks",
        "report",
        "fleet",
        "fleet-report",
        "repair",
        "baseline create",
    ):
        assert f"fsaudit {command}" in text
    assert "--max-report-size" in text and "EXIT STATUS" in text and "_FSAUDIT_COMPLETE=bash_source" in text


def complete(words: str) -> list:
    """What bash would offer for the last word of `words`."""
    position = str(len(words.split()) - 1)
    done = subprocess.run(
        [sys.executable, "-m", "fsaudit"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COMP_WORDS": words, "COMP_CWORD": position, "_FSAUDIT_COMPLETE": "bash_complete"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines()]


def test_shell_completion_knows_commands_and_checker_names():
    assert "audit" in complete("fsaudit au")
    assert complete("fsaudit fleet-r") == ["fleet-report"]
    assert {"pip", "postgres"} <= set(complete("fsaudit audit --check p"))
    source = subprocess.run(
        [sys.executable, "-m", "fsaudit"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "_FSAUDIT_COMPLETE": "bash_source"},
    ).stdout  # fmt: skip
    assert "_fsaudit_completion()" in source and "complete " in source
