"""JSON output printed to a terminal cannot drive it either: the characters the text formats escape
beyond C0 (DEL, C1 controls such as CSI U+009B, line separators, bidirectional overrides) reach
the JSON as `\\u` escapes, whichever encoder wrote it (orjson, or Python's on a VM without it), and
the values read back are exactly what the audited system holds."""

from __future__ import annotations

import json
import re
import sys

import pytest

from fsaudit.model import CheckResult, Finding, Report, Status, dumps
from tests.conftest import fsaudit

# CSI 2 J (clear the screen) as a C1 control, DEL, a line separator, a right-to-left override.
C1 = "\x9b2J\x7f\u2028\u202etxt.exe"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def hostile_report() -> Report:
    finding = Finding(
        "debian", "content-differs", "critical", f"differs{C1}", path=f"/usr/bin/{C1}",
        subject=f"sed{C1}", details={"owner": f"user{C1}", f"key{C1}": 1}, advice=f"reinstall{C1}",
    )  # fmt: skip
    return Report(
        host={"hostname": f"vm{C1}", "os": "Debian"}, root="/",
        started="2026-06-08T10:00:00+00:00", finished="2026-06-08T11:00:00+00:00",
        checks=[CheckResult("debian", Status.CRITICAL, stats={"note": C1}, findings=[finding])],
    )  # fmt: skip


@pytest.mark.parametrize("orjson", [True, False], ids=["orjson", "standard encoder"])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_report_as_json_holds_no_raw_control_character(monkeypatch, orjson, indent):
    if not orjson:
        monkeypatch.setitem(sys.modules, "orjson", None)
    text = hostile_report().to_json(indent)
    assert not RAW.search(text), repr(RAW.search(text))
    assert "\\u009b2J\\u007f\\u2028\\u202etxt.exe" in text
    data = json.loads(text)
    assert data["checks"][0]["findings"][0]["path"] == f"/usr/bin/{C1}"  # the exact name, read back
    assert data["host"]["hostname"] == f"vm{C1}"
    assert Report.from_json(text) == Report.from_json(hostile_report().to_json())


def test_the_escapes_leave_the_json_text_itself_alone():
    # Only characters inside strings change: an indented document keeps its own newlines.
    assert dumps({"a": [1, "b"]}, 2) == '{\n  "a": [\n    1,\n    "b"\n  ]\n}'
    assert dumps({"a": "x\ny"}) == '{"a":"x\\ny"}'


def test_audit_and_fleet_report_print_json_with_no_raw_control_character(tmp_path):
    name = f"f{C1}"
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "srv").mkdir()
    (root / "srv" / name).write_bytes(b"data")
    run = fsaudit("audit", "--root", root, "--check", "window", "--window", "2000-01-01..2100-01-01",
                  "--format", "json")  # fmt: skip
    assert run.code in (0, 1), run.stderr
    assert not RAW.search(run.stdout), repr(RAW.search(run.stdout))
    paths = {f["path"] for f in run.report["checks"][0]["findings"]}
    assert f"/srv/{name}" in paths

    (tmp_path / "fleet" / "reports").mkdir(parents=True)
    (tmp_path / "fleet" / "reports" / "vm1.json").write_text(hostile_report().to_json())
    fleet = fsaudit("fleet-report", tmp_path / "fleet", "--format", "json")
    assert fleet.code == 2, fleet.stderr
    assert not RAW.search(fleet.stdout), repr(RAW.search(fleet.stdout))
    assert C1 in json.dumps(json.loads(fleet.stdout), ensure_ascii=False)  # the values read back
