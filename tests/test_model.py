"""Report JSON: round trip, schema, untrusted names, status precedence."""

import base64
import json

import jsonschema
import pytest

from fsaudit import model
from fsaudit.model import CheckResult, Finding, NotListed, Report, Severity, Status, worst
from tests.conftest import REPO

SCHEMA = json.loads((REPO / "fsaudit" / "schema" / "report.schema.json").read_text())


def _report() -> Report:
    raw = b"/srv/caf\xe9.txt"
    return Report(
        host={"hostname": "web42", "os": "Debian GNU/Linux 12 (bookworm)"},
        root="/",
        started="2026-11-21T10:00:00+00:00",
        finished="2026-11-21T10:01:00+00:00",
        window={"start": "2014-06-02T00:00:00+00:00", "end": "2014-06-08T00:00:00+00:00"},
        fsaudit_version="0.1.0",
        checks=[
            CheckResult(
                "debian",
                Status.CRITICAL,
                seconds=1.5,
                stats={"files_verified": 3},
                covers="system files (Debian packages)",
                category="os-files",
                findings=[
                    Finding(
                        "debian",
                        "content-differs",
                        Severity.CRITICAL,
                        "content differs",
                        path="/usr/bin/sed",
                        subject="sed 4.9-1",
                        details={"expected_md5": "00"},
                        advice="reinstall the package sed",
                    ),
                    Finding("debian", "missing", "critical", "file is missing", path=raw),
                ],
                not_listed=[NotListed("missing", Severity.CRITICAL, 7, path="/usr/bin/sed", last="gone")],
            ),
            CheckResult("window", Status.SKIPPED, reason="no window given"),
        ],
        uid=65534,
        interrupted=True,
    )


def test_report_round_trips_through_json():
    report = _report()
    assert Report.from_json(report.to_json()) == report


def _standard_encoder_only(monkeypatch):
    """As on a VM that runs the fleet's zipapp, where orjson is not installed."""
    monkeypatch.setitem(__import__("sys").modules, "orjson", None)


@pytest.mark.parametrize("indent", [None, 2, 4])
def test_report_json_is_the_same_text_with_or_without_orjson(monkeypatch, indent):
    report = _report()
    report.checks[0].stats.update(ratio=0.1 + 0.2, big=2**62, names=["caf\u00e9", "\u65e5\u672c"])
    fast = report.to_json(indent)
    _standard_encoder_only(monkeypatch)
    assert report.to_json(indent) == fast
    assert json.loads(fast)["checks"][0]["stats"]["names"] == ["caf\u00e9", "\u65e5\u672c"]


def test_report_json_falls_back_to_the_standard_encoder_where_orjson_refuses():
    # A number beyond 64 bits: orjson refuses it, the report is still written.
    report = _report()
    report.checks[0].stats.update(huge=2**70)
    assert json.loads(report.to_json())["checks"][0]["stats"]["huge"] == 2**70
    # A lone surrogate (a report cleans its text first; the encoder must not depend on that).
    assert json.loads(model.dumps({"odd": "\udce9"})) == {"odd": "\udce9"}
    assert model.dumps({"a": [1, "b"]}) == '{"a":[1,"b"]}'


def test_report_json_matches_the_shipped_schema():
    jsonschema.validate(json.loads(_report().to_json()), SCHEMA)


def test_non_utf8_path_is_escaped_and_kept_in_base64():
    finding = _report().checks[0].findings[1]
    assert finding.path == "/srv/caf\\xe9.txt"
    assert base64.b64decode(finding.details["path_b64"]) == b"/srv/caf\xe9.txt"
    json.dumps(finding.to_dict())  # must be JSON-safe


def test_surrogate_escaped_str_path_is_treated_like_bytes():
    finding = Finding("x", "y", "info", "m", path="/srv/caf\udce9.txt")
    assert finding.path == "/srv/caf\\xe9.txt"
    assert "path_b64" in finding.details


@pytest.mark.parametrize(
    "statuses, expected",
    [
        ([], Status.OK),
        ([Status.SKIPPED], Status.OK),
        ([Status.OK, Status.WARNING], Status.WARNING),
        ([Status.WARNING, Status.UNKNOWN], Status.UNKNOWN),
        ([Status.UNKNOWN, Status.CRITICAL, Status.WARNING], Status.CRITICAL),
    ],
)
def test_critical_wins_over_unknown_which_wins_over_warning(statuses, expected):
    assert worst(statuses) is expected


def test_exit_codes_follow_the_monitoring_convention():
    assert [Status(s).exit_code for s in ("ok", "warning", "critical", "unknown")] == [0, 1, 2, 3]


def test_from_json_rejects_what_is_not_a_report():
    with pytest.raises(ValueError):
        Report.from_json('{"format": "something-else"}')


def test_uid_interruption_and_declarations_survive_the_round_trip():
    data = json.loads(_report().to_json())
    assert data["uid"] == 65534 and data["interrupted"] is True
    assert data["checks"][0]["covers"] == "system files (Debian packages)"
    assert data["checks"][0]["category"] == "os-files"


def test_a_report_from_before_uid_and_interruption_still_loads():
    data = json.loads(_report().to_json())
    for key in ("uid", "interrupted"):
        del data[key]
    for check in data["checks"]:
        del check["covers"], check["category"], check["not_listed"]
    report = Report.from_dict(data)
    assert report.uid is None and report.interrupted is False and report.checks[0].covers == ""
    assert report.checks[0].not_listed == []
    jsonschema.validate(data, SCHEMA)


@pytest.mark.parametrize("uid", [True, "0", -1.5, [0]])
def test_a_uid_that_is_not_a_number_is_not_kept(uid):
    data = json.loads(_report().to_json())
    data["uid"] = uid
    assert Report.from_dict(data).uid is None


def test_one_ranking_sorts_statuses_and_severities_worst_first():
    statuses = sorted(Status, key=lambda s: -s.rank)
    assert [s.value for s in statuses] == ["critical", "unknown", "warning", "ok", "skipped"]
    severities = sorted(Severity, key=lambda s: -s.rank)
    assert [s.value for s in severities] == ["critical", "warning", "info"]


def test_findings_counted_but_not_listed_count_in_the_totals():
    check = _report().checks[0]
    assert check.counts() == {"critical": 2 + 7, "warning": 0, "info": 0}
    data = json.loads(_report().to_json())["checks"][0]["not_listed"]
    assert data == [{"code": "missing", "severity": "critical", "count": 7, "path": "/usr/bin/sed",
                     "subject": None, "last": "gone"}]  # fmt: skip
