"""Text, Nagios and Prometheus output of a fixed report against golden files, through the real CLI."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fsaudit.model import Report
from fsaudit.report import RENDERERS
from fsaudit.report.nagios import render_nagios
from fsaudit.report.prometheus import render_prometheus
from tests.conftest import REPO, fsaudit

GOLDEN = REPO / "tests" / "golden"
REPORT = GOLDEN / "report.json"
# FSAUDIT_REGEN_GOLDEN=1 rewrites the golden files from the current renderers (review the diff).
REGEN = os.environ.get("FSAUDIT_REGEN_GOLDEN") == "1"


@pytest.mark.parametrize("fmt,suffix", [("text", "txt"), ("nagios", "nagios"), ("prometheus", "prom")])
def test_rendering_matches_the_golden_file(fmt, suffix):
    run = fsaudit("report", REPORT, "--format", fmt)
    assert run.code == 2, run.stderr
    golden = GOLDEN / f"report.{suffix}"
    if REGEN:
        golden.write_text(run.stdout)
    assert run.stdout == golden.read_text()


def test_every_format_is_registered():
    assert {"text", "json", "html", "nagios", "prometheus"} <= set(RENDERERS)


def _report(**changes) -> Report:
    data = json.loads(REPORT.read_text())
    data.update(changes)
    return Report.from_dict(data)


def test_nagios_status_line_and_perfdata():
    first, *long_text = render_nagios(_report()).splitlines()
    status, perfdata = first.split(" | ")
    assert status.startswith("FSAUDIT CRITICAL - shop-vm42: ")
    values = dict(item.split("=", 1) for item in perfdata.split())
    assert values["critical"] == "4;;;0"
    assert values["warning"] == "3;;;0"
    assert values["debian_critical"] == "3;;;0"
    assert values["postgres_seconds"] == "95.500s;;;0"
    # Skipped checks are in the long text, not in the perfdata.
    assert not any(key.startswith("rpm_") for key in values)
    assert "SKIPPED rpm: no RPM database on this system" in long_text
    assert all("|" not in line for line in long_text)


@pytest.mark.parametrize(
    "statuses,state,code",
    [(["ok", "skipped"], "OK", 0), (["ok", "warning"], "WARNING", 1), (["warning", "unknown"], "UNKNOWN", 3)],
)
def test_nagios_state_follows_the_exit_code(tmp_path, statuses, state, code):
    checks = [{"name": f"c{i}", "status": s, "findings": []} for i, s in enumerate(statuses)]
    path = tmp_path / "report.json"
    path.write_text(_report(checks=checks).to_json())
    run = fsaudit("report", path, "--format", "nagios")
    assert run.code == code
    assert run.stdout.startswith(f"FSAUDIT {state} - ")


def test_prometheus_output_parses_as_exposition_format():
    text = render_prometheus(_report())
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in (
        "fsaudit_status",
        "fsaudit_check_status",
        "fsaudit_findings",
        "fsaudit_check_duration_seconds",
        "fsaudit_last_audit_timestamp_seconds",
    ):
        assert name in families, name
        assert families[name].type == "gauge"
        assert families[name].documentation
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("fsaudit_check_status", (("check", "ldap"),))] == 3
    assert samples[("fsaudit_findings", (("check", "debian"), ("severity", "critical")))] == 3
    assert samples[("fsaudit_last_audit_timestamp_seconds", ())] == 1795284192


def test_prometheus_escapes_label_values_and_leaves_out_an_unfinished_audit():
    data = json.loads(REPORT.read_text())
    data["finished"] = ""
    data["checks"] = [{"name": 'we"ird\\name\nx', "status": "ok", "findings": []}]
    text = render_prometheus(Report.from_dict(data))
    families = {family.name: family for family in text_string_to_metric_families(text)}
    # quotes and backslashes survive; a control character (here a newline) is shown escaped
    assert families["fsaudit_check_status"].samples[0].labels["check"] == 'we"ird\\name\\x0ax'
    assert "fsaudit_last_audit_timestamp_seconds" not in families


def test_prometheus_output_goes_to_a_textfile_atomically(tmp_path):
    target = tmp_path / "fsaudit.prom"
    run = fsaudit("report", REPORT, "--format", "prometheus", "--output", target)
    assert run.code == 2
    assert target.read_text().startswith("# HELP fsaudit_status ")
    assert [p.name for p in tmp_path.iterdir()] == ["fsaudit.prom"]
