"""The CLI contract, run as a real subprocess with a third-party checker plug-in installed the way
any add-on is (an entry point in a dist-info on the path): exit codes, isolation, options, output."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO, fsaudit, interruptible

PLUGIN = textwrap.dedent(
    '''
    import atexit
    import os
    import time
    from fsaudit.checker import Checker, Option, Skip

    class Damage(Checker):
        """Reports as much damage as it is told to."""
        name = "damage"
        options = (Option("count", "how many findings", kind=int, default=1),
                   Option("severity", "which severity", default="critical",
                          choices=("critical", "warning", "info")))
        codes = {"broken": "a broken thing"}

        def run(self, target):
            marker = os.environ.get("FSAUDIT_TEST_AT_EXIT")
            if marker:
                atexit.register(lambda: open(marker, "w").close())
            for number in range(self.settings["count"]):
                self.count("things_checked")
                yield self.finding("broken", self.settings["severity"], f"thing {number} is broken",
                                   path=f"/srv/thing{number}", advice="restore it from backup")

    class Crash(Checker):
        """Always fails."""
        name = "crash"

        def run(self, target):
            raise RuntimeError("the checker has a bug")
            yield

    class NeedsDep(Checker):
        """Needs a module nobody has."""
        name = "needsdep"
        requires = ("no_such_module_anywhere",)
        extra = "nothing"

        def run(self, target):
            yield from ()

    class Absent(Checker):
        """Never applies."""
        name = "absent"

        def applies(self, target):
            raise Skip("there is nothing of that kind here")

    class Slow(Checker):
        """Takes its time."""
        name = "slow"

        def run(self, target):
            marker = os.environ.get("FSAUDIT_TEST_MARKER")
            if marker:
                open(marker, "w").close()
            time.sleep(60)
            yield from ()
    '''
)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "fsaudit_testplugin.py").write_text(PLUGIN)
    dist = site / "fsaudit_testplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fsaudit-testplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[fsaudit.checks]\n"
        + "".join(
            f"{n} = fsaudit_testplugin:{c}\n"
            for n, c in [
                ("damage", "Damage"),
                ("crash", "Crash"),
                ("needsdep", "NeedsDep"),
                ("absent", "Absent"),
                ("slow", "Slow"),
            ]
        )
        + "broken = fsaudit_testplugin:DoesNotExist\n"
    )
    return {"PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


def test_checks_lists_builtins_and_plugins_with_reasons(plugin_env):
    run = fsaudit("checks", env=plugin_env)
    assert run.code == 0
    assert "damage" in run.stdout and "fsaudit-testplugin 1.0" in run.stdout
    assert "there is nothing of that kind here" in run.stdout
    assert "pip install 'fsaudit[nothing]'" in run.stdout
    assert "cannot load" in run.stdout  # the broken entry point is shown, not dropped


def test_damage_exits_2_and_a_crashing_checker_does_not_stop_the_audit(plugin_env):
    run = fsaudit("audit", "--check", "crash", "--check", "damage", "--format", "json", env=plugin_env)
    assert run.code == 2
    crash = run.check("crash")
    assert crash["status"] == "unknown" and "the checker has a bug" in crash["reason"]
    assert run.check("damage")["status"] == "critical"
    assert "Traceback" not in run.stderr


def test_the_program_ends_fast_yet_flushes_everything_and_runs_the_exit_handlers(plugin_env, tmp_path):
    # `python -m fsaudit` skips the interpreter's teardown (fsaudit.cli.run): the whole report still
    # reaches the pipe, the exit code is the report's, and exit handlers (here a plug-in's) run.
    marker = tmp_path / "at-exit"
    env = {**plugin_env, "FSAUDIT_TEST_AT_EXIT": str(marker)}
    run = fsaudit("audit", "--check", "damage", "--set", "damage.count=20000", "--format", "json", env=env)
    assert run.code == 2
    assert len(run.check("damage")["findings"]) == 20000
    assert marker.exists()


def test_a_crash_alone_exits_3(plugin_env):
    assert fsaudit("audit", "--check", "crash", env=plugin_env).code == 3


def test_warnings_only_exit_1_and_ok_exits_0(plugin_env):
    warn = fsaudit("audit", "--check", "damage", "--set", "damage.severity=warning", env=plugin_env)
    assert warn.code == 1
    clean = fsaudit("audit", "--check", "damage", "--set", "damage.count=0", env=plugin_env)
    assert clean.code == 0
    assert clean.stdout.startswith("OK: no damage found")


def test_missing_dependency_and_not_applicable_are_skipped_with_the_reason(plugin_env):
    run = fsaudit("audit", "--check", "needsdep", "--check", "absent", "--format", "json", env=plugin_env)
    assert run.code == 0
    assert run.check("needsdep")["status"] == "skipped"
    assert "pip install 'fsaudit[nothing]'" in run.check("needsdep")["reason"]
    assert run.check("absent")["reason"] == "there is nothing of that kind here"


def test_a_broken_plugin_is_unknown_when_selected(plugin_env):
    run = fsaudit("audit", "--check", "broken", "--format", "json", env=plugin_env)
    assert run.code == 3
    assert "cannot load" in run.check("broken")["reason"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--check", "nonesuch"], "unknown checker 'nonesuch'"),
        (["--set", "damage.count=many"], "damage.count: expected int"),
        (["--set", "damage.colour=red"], "unknown option 'colour'"),
        (["--set", "damage"], "expected CHECK.KEY=VALUE"),
        (["--window", "2014-06-07..2014-06-02"], "ends before it starts"),
        (["--format", "pdf"], "Invalid value"),
        (["--no-such-flag"], "No such option"),
        (["--jobs", "0"], "Invalid value"),
    ],
)
def test_usage_errors_exit_3_before_any_check_runs(plugin_env, args, message):
    run = fsaudit("audit", "--check", "damage", *args, env=plugin_env)
    assert run.code == 3, run.stderr
    assert message in run.stderr
    assert run.stdout == ""


def test_config_file_sets_options_and_the_command_line_wins(plugin_env, tmp_path):
    config = tmp_path / "fsaudit.toml"
    config.write_text('[audit]\ncheck = ["damage"]\n\n[checks.damage]\ncount = 3\n')
    run = fsaudit("audit", "--config", config, "--format", "json", env=plugin_env)
    assert len(run.findings("damage")) == 3
    run = fsaudit("audit", "--config", config, "--set", "damage.count=2", "--format", "json", env=plugin_env)
    assert len(run.findings("damage")) == 2
    config.write_text("[checks.damage\n")
    bad = fsaudit("audit", "--config", config, env=plugin_env)
    assert bad.code == 3 and "not valid TOML" in bad.stderr


def test_output_file_and_report_command_render_the_same_report(plugin_env, tmp_path):
    out = tmp_path / "report.json"
    run = fsaudit(
        "audit",
        "--check",
        "damage",
        "--window",
        "2014-06-02..2014-06-07",
        "--format",
        "json",
        "--output",
        out,
        env=plugin_env,
    )
    assert run.code == 2 and run.stdout == ""
    data = json.loads(out.read_text())
    assert data["window"]["start"].startswith("2014-06-02T00:00:00")
    text = fsaudit("report", out, "--format", "text", env=plugin_env)
    assert text.code == 2
    assert text.stdout.splitlines()[0].startswith("CRITICAL: damage found")
    assert "restore it from backup" in text.stdout
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    bad = fsaudit("report", garbage, env=plugin_env)
    assert bad.code == 3 and "not a valid fsaudit report" in bad.stderr


def test_unwritable_output_is_an_error_exit(plugin_env, tmp_path):
    run = fsaudit(
        "audit",
        "--check",
        "damage",
        "--set",
        "damage.count=0",
        "--output",
        tmp_path / "no" / "such" / "dir" / "r.json",
        env=plugin_env,
    )
    assert run.code == 3 and "cannot write the report" in run.stderr


def test_long_lists_are_summarised_in_text(plugin_env):
    run = fsaudit("audit", "--check", "damage", "--set", "damage.count=25", env=plugin_env)
    assert "... and 15 more" in run.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_end_with_a_report_of_what_was_done(plugin_env, tmp_path, sig):
    marker = tmp_path / "slow-started"
    env = {**os.environ, **plugin_env, "NO_COLOR": "1", "FSAUDIT_TEST_MARKER": str(marker)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fsaudit",
            "audit",
            "--check",
            "damage",
            "--check",
            "slow",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 2  # damage was found before the interrupt: critical wins
    report = json.loads(stdout)
    slow = [c for c in report["checks"] if c["name"] == "slow"][0]
    assert slow["status"] == "unknown" and "interrupted" in slow["reason"]
    assert report["interrupted"] is True
    assert "interrupted" in stderr and "Traceback" not in stderr


def test_an_audit_killed_by_timeout_leaves_its_report_in_the_output_file(plugin_env, tmp_path):
    output = tmp_path / "report.json"
    # `timeout` sends SIGTERM, as systemd and cron jobs do
    command = ["timeout", "--preserve-status", "3", sys.executable, "-m", "fsaudit", "audit",
               "--check", "slow", "--format", "json", "--output", str(output)]  # fmt: skip
    env = {**os.environ, **plugin_env}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3, done.stderr
    report = json.loads(output.read_text())
    assert report["interrupted"] is True and report["status"] == "unknown"


def test_version_and_module_entry_point():
    run = fsaudit("--version")
    assert run.code == 0 and "fsaudit" in run.stdout


def test_output_to_a_device_writes_to_it_and_never_replaces_it(plugin_env, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    run = fsaudit("audit", "--check", "damage", "--format", "json", "--output", fifo, env=plugin_env)
    received = reader.communicate(timeout=60)[0]
    assert run.code == 2
    assert json.loads(received)["status"] == "critical"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert fsaudit("audit", "--check", "damage", "--output", "/dev/null", env=plugin_env).code == 2
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
