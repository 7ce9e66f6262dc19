"""Each input of a run is worked out once (fsaudit.settings): one Target, the audited system's time zone
read once, the window read once and placed in that zone, one default and clamp of --jobs."""

import os
import shutil

import pytest

import fsaudit.runner
import fsaudit.settings
from fsaudit.checker import Context
from fsaudit.cli import main
from fsaudit.errors import UsageError
from fsaudit.settings import default_jobs, read_window, run_io_depth, run_jobs, run_settings
from fsaudit.window import WindowSpec

TOKYO = "/usr/share/zoneinfo/Asia/Tokyo"


@pytest.fixture
def tokyo_root(tmp_path):
    if not os.path.exists(TOKYO):
        pytest.fail("the time zone data is missing: apt-get install tzdata (tests/run installs it)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    shutil.copy(TOKYO, root / "etc" / "localtime")
    (root / "var" / "log").mkdir(parents=True)
    return root


def test_jobs_have_one_default_and_one_clamp():
    assert run_jobs(None, {}) == default_jobs() >= 1
    assert run_jobs(None, {"jobs": 3}) == 3
    assert run_jobs(2, {"jobs": 3}) == 2  # the command line wins over the config
    with pytest.raises(UsageError):
        run_jobs(None, {"jobs": "many"})
    assert Context(jobs=0).jobs == 1 and Context(io_depth=-4).io_depth == 1
    assert run_io_depth(None, {}) == 32 and run_io_depth(None, {"io_depth": 8}) == 8
    assert run_io_depth(64, {"io_depth": 8}) == 64


def test_the_window_is_read_once_and_placed_in_the_audited_systems_zone(tokyo_root):
    spec = read_window("2014-06-02..2014-06-03")
    assert isinstance(spec, WindowSpec) and read_window(None) is None
    with pytest.raises(UsageError, match="--window"):
        read_window("2014-06-03..2014-06-02")
    run = run_settings(str(tokyo_root), [], window=spec, jobs=2)
    assert run.context.window.start.isoformat() == "2014-06-02T00:00:00+09:00"
    assert run.context.window.end.isoformat() == "2014-06-04T00:00:00+09:00"
    assert run.context.jobs == 2 and run.target.root_text == str(tokyo_root)


def test_an_audit_reads_the_audited_systems_time_zone_once(tokyo_root, monkeypatch, capsys):
    calls = []
    real = fsaudit.settings.target_timezone

    def counted(target):
        calls.append(target.root_text)
        return real(target)

    monkeypatch.setattr(fsaudit.settings, "target_timezone", counted)
    monkeypatch.setattr(fsaudit.runner, "target_timezone", counted)
    argv = ["audit", "--root", str(tokyo_root), "--check", "window", "--check", "logs"]
    argv += ["--window", "2014-06-02..2014-06-03", "--format", "json", "--set", "logs.journal=false"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    assert calls == [str(tokyo_root)]
    assert '"start":"2014-06-02T00:00:00+09:00"' in capsys.readouterr().out


def test_a_window_option_of_a_checker_is_read_when_options_are_parsed():
    from fsaudit.checker import OptionError
    from fsaudit_checks.window import WindowChecker

    settings = WindowChecker.validate_options({"window": ["2014-06-02..2014-06-03"]})
    assert isinstance(settings["window"], WindowSpec)
    with pytest.raises(OptionError, match="START..END"):
        WindowChecker.validate_options({"window": ["June"]})
