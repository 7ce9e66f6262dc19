"""`fsaudit report --validate`: the shipped JSON Schema, and what a schema cannot say."""

from __future__ import annotations

import json

from tests.conftest import REPO, fsaudit

REPORT = REPO / "tests" / "golden" / "report.json"


def _write(tmp_path, data) -> str:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_valid_report_passes():
    run = fsaudit("report", "--validate", REPORT)
    assert run.code == 0, run.stdout + run.stderr
    assert "a valid fsaudit report" in run.stdout


def test_schema_violations_are_listed_with_where_they_are(tmp_path):
    data = json.loads(REPORT.read_text())
    data["checks"][0]["findings"][0]["severity"] = "disaster"
    data["checks"][1]["findings"][0]["code"] = "Not Kebab"
    del data["host"]
    run = fsaudit("report", "--validate", _write(tmp_path, data))
    assert run.code == 3
    assert "checks/0/findings/0/severity: 'disaster' is not one of" in run.stdout
    assert "checks/1/findings/0/code:" in run.stdout
    assert "'host' is a required property" in run.stdout
    assert "is not a valid fsaudit report (3 problem(s))" in run.stderr


def test_a_status_that_contradicts_the_checks_is_invalid(tmp_path):
    data = json.loads(REPORT.read_text())
    data["status"] = "ok"
    run = fsaudit("report", "--validate", _write(tmp_path, data))
    assert run.code == 3
    assert "status: is 'ok' but the checks add up to 'critical'" in run.stdout


def test_a_path_b64_that_is_not_base64_is_invalid(tmp_path):
    data = json.loads(REPORT.read_text())
    data["checks"][2]["findings"][0]["details"]["path_b64"] = "not base64!"
    run = fsaudit("report", "--validate", _write(tmp_path, data))
    assert run.code == 3
    assert "checks/2/findings/0/details/path_b64: not base64" in run.stdout


def test_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{ half a report")
    run = fsaudit("report", "--validate", path)
    assert run.code == 3
    assert "is not a valid fsaudit report: not JSON" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_report_the_cli_writes_validates(tmp_path):
    output = tmp_path / "audit.json"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    run = fsaudit("audit", "--root", root, "--format", "json", "--output", output)
    assert run.code == 0, run.stderr  # nothing of any kind to check there: every check is skipped
    assert fsaudit("report", "--validate", output).code == 0


def test_without_jsonschema_the_hint_names_the_extra(tmp_path):
    # A directory first on sys.path whose `jsonschema` cannot be imported stands for a missing module.
    blocker = tmp_path / "jsonschema"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('jsonschema is not installed')\n")
    run = fsaudit("report", "--validate", REPORT, env={"PYTHONPATH": str(tmp_path)})
    assert run.code == 3
    assert "pip install 'fsaudit[validate]'" in run.stderr
