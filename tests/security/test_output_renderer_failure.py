"""A renderer or the progress display failing never loses the report: a name like `x[/bad]Data.fs`
used to crash the progress display (rich markup) and end the audit with exit 3 and no report, even
with --output. The report is written whatever the display does; when the format asked for cannot be
made, the whole report is saved as JSON and the failure is said on stderr with exit 3."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap

import pytest

from fsaudit.model import CheckResult, Report
from fsaudit.runner import GuardedProgress, run_audit
from fsaudit.target import Target
from tests.conftest import REPO

PLUGIN = textwrap.dedent(
    '''
    from fsaudit.checker import Checker

    class Markup(Checker):
        """Finds damage in a file whose name is rich markup, and shows the name as progress."""
        name = "markup"
        codes = {"broken": "a broken file"}

        def run(self, target):
            path = "/srv/zope/x[/bad]Data.fs"
            self.context.progress.start(f"markup: {path}", total=2)
            self.context.progress.update(description=f"checking {path} [blink]now[/blink]")
            self.context.progress.advance()
            self.count("files_checked")
            yield self.finding("broken", "critical", "the storage is damaged", path=path,
                               advice="restore it from backup")
    '''
)


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "markup_plugin.py").write_text(PLUGIN)
    dist = site / "markup_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: markup-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fsaudit.checks]\nmarkup = markup_plugin:Markup\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "NO_COLOR": "1"}


def test_a_markup_name_on_a_terminal_does_not_cost_the_report(plugin_env, tmp_path):
    output = tmp_path / "report.json"
    controller, terminal = pty.openpty()  # stderr is a terminal: the progress display is on
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fsaudit", "audit", "--check", "markup", "--format", "json",
             "--output", str(output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, env=plugin_env, timeout=120,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 2
    report = json.loads(output.read_text())
    assert report["checks"][0]["findings"][0]["path"] == "/srv/zope/x[/bad]Data.fs"


class Exploding:
    """A progress display that fails the first time it is asked to show anything."""

    enabled = True

    def __init__(self):
        self.calls = 0

    def start(self, label, total=None):
        self.calls += 1
        raise RuntimeError("closing tag '[/bad]' doesn't match any open tag")

    def update(self, total=None, description=None):
        self.calls += 1
        raise RuntimeError("the terminal went away")

    def advance(self, amount=1):
        self.calls += 1

    def stop(self):
        pass


def test_a_failing_progress_display_is_switched_off_and_the_audit_goes_on(tmp_path):
    from fsaudit.checker import Context

    progress = Exploding()
    context = Context(progress=progress)
    report, interrupted = run_audit(Target(str(tmp_path)), [], context)
    guarded = context.progress
    assert isinstance(guarded, GuardedProgress) and not interrupted
    guarded.start("x")
    guarded.update(description="y")
    guarded.advance()
    assert progress.calls == 1  # switched off after the first failure
    assert isinstance(report, Report)


def run_with_broken_renderer(fmt: str, *args, cwd) -> subprocess.CompletedProcess:
    """`fsaudit ARGS` with the `fmt` renderer made to fail, as a bug in it or an odd report would."""
    program = (
        "import sys\n"
        "from fsaudit import report\n"
        "def broken(report, colour=False):\n"
        "    raise KeyError('info')\n"
        f"report.RENDERERS[{fmt!r}] = broken\n"
        "from fsaudit.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program, *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def damaged_root(tmp_path):
    import gzip

    from fixtures.corrupt import flip_byte

    root = tmp_path / "root"
    (root / "srv").mkdir(parents=True)
    archive = root / "srv" / "data.gz"
    archive.write_bytes(gzip.compress(b"data\n" * 1000))
    flip_byte(archive, -6)
    return root


@pytest.mark.parametrize("fmt", ["html", "text", "nagios"])
def test_a_renderer_failure_saves_the_report_as_json_beside_the_output(tmp_path, fmt):
    root = damaged_root(tmp_path)
    output = tmp_path / f"report.{fmt}"
    done = run_with_broken_renderer(
        fmt, "audit", "--root", root, "--check", "content", "--set", "content.paths=/srv",
        "--format", fmt, "--output", output, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # damage was found: critical wins, as for an interrupt
    assert "could not be made" in done.stderr and "KeyError" in done.stderr
    saved = Report.from_json((tmp_path / f"report.{fmt}.json").read_text())
    assert [f.code for f in saved.checks[0].findings] == ["checksum-mismatch"]
    assert not output.exists()


def test_without_output_the_report_lands_in_the_current_directory_and_the_exit_code_is_3(tmp_path):
    done = run_with_broken_renderer("text", "audit", "--root", tmp_path, "--check", "git", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    saved = list(tmp_path.glob("fsaudit-report-*.json"))
    assert len(saved) == 1 and str(saved[0].name) in done.stderr
    assert isinstance(Report.from_json(saved[0].read_text()).checks[0], CheckResult)
