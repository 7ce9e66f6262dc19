"""The streaming reader of VM reports: the same Report as `json.loads` for valid reports, the schema's
rules for findings, bounded memory for what it keeps, and a ReportError for everything else."""

from __future__ import annotations

import copy
import io
import json
import random

import jsonschema
import pytest

from fsaudit.fleet import reader
from fsaudit.fleet.reader import ReportError, finding_problem, read_report
from fsaudit.model import Report
from fsaudit.schema import load_schema
from tests.conftest import REPO

GOLDEN = (REPO / "tests" / "golden" / "report.json").read_text()


def read(text, **options) -> Report:
    return read_report(io.BytesIO(text.encode("utf-8") if isinstance(text, str) else text), **options)


def test_a_valid_report_reads_as_json_loads_reads_it():
    assert read(GOLDEN) == Report.from_json(GOLDEN)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunk_boundaries_anywhere_change_nothing(monkeypatch, chunk):
    # a number cut at a chunk's end (`41.2|7`) must not be read as 41.2
    monkeypatch.setattr(reader, "CHUNK", chunk)
    assert read(GOLDEN) == Report.from_json(GOLDEN)


def test_only_the_first_findings_of_each_code_are_kept_but_every_count_is_complete():
    data = json.loads(GOLDEN)
    debian = data["checks"][0]
    debian["findings"] = [dict(debian["findings"][0], path=f"/usr/bin/x{i}") for i in range(50)]
    report = read(json.dumps(data), keep=3)
    check = report.checks[0]
    assert len(check.findings) == 3 and check.truncated
    assert check.counts()["critical"] == 50 and check.group_counts[("critical", "content-differs")] == 50


def test_findings_a_check_counted_but_did_not_list_count_when_the_list_is_cut_too():
    data = json.loads(GOLDEN)
    debian = data["checks"][0]
    debian["findings"] = [dict(debian["findings"][0], path=f"/usr/bin/x{i}") for i in range(50)]
    debian["not_listed"] = [{"code": "content-differs", "severity": "critical", "count": 25, "path": None,
                             "subject": None, "last": "x"}]  # fmt: skip
    assert read(json.dumps(data)).checks[0].counts()["critical"] == 75
    assert read(json.dumps(data), keep=3).checks[0].counts()["critical"] == 75
    debian["not_listed"] = [{"code": "content-differs", "severity": "bad", "count": 1}]
    with pytest.raises(ReportError, match="not_listed"):
        read(json.dumps(data))


def test_what_is_kept_is_bounded_by_its_size_too(monkeypatch):
    data = json.loads(GOLDEN)
    big = dict(data["checks"][0]["findings"][0], message="x" * 900)
    monkeypatch.setattr(reader, "KEEP_CHARS", 2 * len(json.dumps(big)) + 10)
    data["checks"][0]["findings"] = [big] * 10
    check = read(json.dumps(data)).checks[0]
    assert len(check.findings) == 2 and check.counts()["critical"] == 10


def _schema_accepts(finding) -> bool:
    schema = load_schema()
    return jsonschema.Draft202012Validator({**schema["$defs"]["finding"], "$defs": schema["$defs"]}).is_valid(
        finding
    )


def _mutations(finding: dict):
    for key in list(finding):
        yield {k: v for k, v in finding.items() if k != key}
        for value in (None, 1, 1.5, True, "", "Bad Code", [], {}, "critical"):
            yield {**finding, key: value}
    for value in ([], "x", None, {"path_b64": 3}, {"path_b64": "AA=="}):
        yield {**finding, "details": value}
    yield [finding]
    yield "finding"


def test_the_finding_rules_are_the_schema_s():
    finding = json.loads(GOLDEN)["checks"][0]["findings"][0]
    for mutated in _mutations(finding):
        assert (finding_problem(mutated) == "") == _schema_accepts(mutated), mutated


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("[]", "does not start"),
        ('{"format": "fsaudit-report/1", "format": "x"}', "appears twice"),
        (GOLDEN.rstrip() + "{}", "extra data"),
        (GOLDEN[: len(GOLDEN) // 2], "not JSON"),
        (GOLDEN.replace('"status": "critical",\n  "checks"', '"status": "ok",\n  "checks"'), "add up"),
        (GOLDEN.replace('"severity": "critical"', '"severity": "fatal"', 1), "severity"),
        (GOLDEN.replace('"name": "debian"', '"name": 7', 1), "name"),
        (GOLDEN.replace('"uid": 0', '"uid": "root"', 1), "uid"),
    ],
)
def test_what_is_not_a_report_says_why(text, problem):
    with pytest.raises(ReportError, match=problem):
        read(text)


def test_invalid_utf8_and_oversized_input_are_refused():
    with pytest.raises(ReportError, match="not UTF-8"):
        read(GOLDEN.encode("utf-8").replace(b"shop-vm42", b"shop-\xff\xfe42"))
    with pytest.raises(ReportError, match="larger than"):
        read(GOLDEN, max_bytes=1000)
    huge = GOLDEN.replace('"message": "the index', '"message": "' + "x" * (reader.MAX_VALUE_BYTES + 10), 1)
    with pytest.raises(ReportError, match="over"):
        read(huge)


def test_a_damaged_report_never_escapes_as_another_error():
    rng = random.Random(1)
    raw = GOLDEN.encode("utf-8")
    for _ in range(400):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(damaged))
            action = rng.random()
            if action < 0.4:
                damaged[position] = rng.randrange(256)
            elif action < 0.7:
                del damaged[position : position + rng.randint(1, 40)]
            else:
                damaged[position:position] = rng.choice([b"{", b"]", b'"', b",", b"1e999", b"null"])
        try:
            read(bytes(damaged))
        except ReportError:
            pass


def test_a_deep_nesting_is_an_error_not_a_crash():
    data = json.loads(GOLDEN)
    data["checks"][0]["stats"] = json.loads("[" * 50 + "]" * 50)
    nested = json.dumps(data).replace(json.dumps(data["checks"][0]["stats"]), "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ReportError):
        read(nested)


def test_the_reader_keeps_nothing_it_does_not_need_when_asked_for_counts_only():
    seen = []
    report = read(GOLDEN, keep=0, on_finding=seen.append)
    assert all(not check.findings for check in report.checks)
    assert len(seen) == sum(len(c["findings"]) for c in json.loads(GOLDEN)["checks"])
    assert copy.deepcopy(report).status.value == "critical"
