"""Reading a report that came from a VM, in bounded memory and time, whatever the VM sent.

`json.loads` of a 48 MB report takes over a gigabyte on the control host, and a fleet holds hundreds
of them. This reader streams the file instead: it walks the report's known shape (an object whose
`checks` hold `findings`), decodes one finding at a time, validates it against the rules of the
report's schema, counts it, and keeps only the first `keep` findings of each (severity, code) of a
check: enough for every renderer, which lists a few thousand per code at most. The counts stay
complete. A file larger than `max_bytes`, a single value larger than `MAX_VALUE_BYTES`, invalid
UTF-8 or anything that is not a report is a `ReportError` saying what and where.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import IO, Any, Callable, Dict, Iterator, List, Tuple

from fsaudit.model import REPORT_FORMAT, CheckResult, Finding, Report, Severity, Status

DEFAULT_MAX_BYTES = 256 << 20
MAX_VALUE_BYTES = 4 << 20  # one finding, or one field of the report or of a check
KEEP_PER_CODE = 2000
# JSON text of the findings kept of one report, at most: what is kept stays small in memory whatever
# the findings hold (2,000 findings of each of 20 codes of a real report take about 16 MB).
KEEP_CHARS = 32 << 20
CHUNK = 1 << 20
_SPACE = re.compile(r"[ \t\n\r]*")
_DELIMITERS = frozenset(" \t\n\r,:]}")
_CODE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_TOP_FIELDS = {"format", "fsaudit_version", "host", "root", "started", "finished", "status", "checks"}
_CHECK_FIELDS = {"name", "status", "findings"}


class ReportError(ValueError):
    """The file is not a report this fsaudit accepts; the message says why."""


class _Text:
    """The file's text, decoded and buffered a chunk at a time, with a read position."""

    def __init__(self, handle: IO[bytes], max_bytes: int):
        self.handle = handle
        self.max_bytes = max_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.buffer = ""
        self.pos = 0
        self.read_bytes = 0
        self.eof = False
        self.last_length = 0  # characters of the last value read

    def fill(self) -> bool:
        """Read another chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.handle.read(CHUNK)
        self.read_bytes += len(chunk)
        if self.read_bytes > self.max_bytes:
            raise ReportError(f"larger than {self.max_bytes:,} bytes")
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            raise ReportError(f"not UTF-8 near byte {self.read_bytes - len(chunk) + error.start:,}") from None
        if self.pos > CHUNK:
            self.buffer, self.pos = self.buffer[self.pos :], 0
        self.buffer += text
        self.eof = not chunk
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            self.pos = _SPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self.fill():
                return ""

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            raise ReportError(f"expected {char!r} but found {found[:1]!r} at character {self.where()}")
        self.pos += 1

    def value(self, decoder: json.JSONDecoder) -> Any:
        """The next JSON value (at most MAX_VALUE_BYTES of text)."""
        self.peek()
        while True:
            try:
                value, end = decoder.raw_decode(self.buffer, self.pos)
            except RecursionError:
                raise ReportError(f"values nested too deeply at character {self.where()}") from None
            except json.JSONDecodeError as error:
                if self.eof:
                    raise ReportError(f"not JSON: {error.msg} at character {self.where()}") from None
                self._grow()
                continue
            if end - self.pos > MAX_VALUE_BYTES:
                raise ReportError(f"a value over {MAX_VALUE_BYTES:,} characters at character {self.where()}")
            # What follows a value is a delimiter; anything else (`41.` of `41.27`) means the value
            # went on past the end of what was read so far.
            if self.eof or (end < len(self.buffer) and self.buffer[end] in _DELIMITERS):
                self.last_length = end - self.pos
                self.pos = end
                return value
            self._grow()

    def _grow(self) -> None:
        if len(self.buffer) - self.pos > MAX_VALUE_BYTES:
            raise ReportError(
                f"a value larger than {MAX_VALUE_BYTES:,} characters at character {self.where()}"
            )
        self.fill()

    def key(self, decoder: json.JSONDecoder) -> str:
        key = self.value(decoder)
        if not isinstance(key, str):
            raise ReportError(f"an object key that is not a string at character {self.where()}")
        self.expect(":")
        return key

    def where(self) -> str:
        consumed = self.read_bytes - len(self.buffer.encode("utf-8", "surrogatepass")) + self.pos
        return f"~{max(consumed, 0):,}"


def _members(text: _Text, decoder: json.JSONDecoder) -> Iterator[str]:
    """The keys of the object at the read position, each left for the caller to read its value."""
    text.expect("{")
    seen = set()
    if text.peek() == "}":
        text.pos += 1
        return
    while True:
        key = text.key(decoder)
        if key in seen:
            raise ReportError(f"the key {key!r} appears twice in one object")
        seen.add(key)
        yield key
        separator = text.peek()
        text.pos += 1
        if separator == "}":
            return
        if separator != ",":
            raise ReportError(f"expected ',' or '}}' but found {separator!r} at character {text.where()}")


def _elements(text: _Text) -> Iterator[None]:
    """One step per element of the array at the read position; the caller reads each element."""
    text.expect("[")
    if text.peek() == "]":
        text.pos += 1
        return
    while True:
        yield None
        separator = text.peek()
        text.pos += 1
        if separator == "]":
            return
        if separator != ",":
            raise ReportError(f"expected ',' or ']' but found {separator!r} at character {text.where()}")


def finding_problem(data: Any) -> str:
    """What makes `data` not a finding of the report schema ($defs/finding), or ""."""
    if not isinstance(data, dict):
        return "is not an object"
    for key in ("check", "code", "severity", "message"):
        if key not in data:
            return f"lacks {key!r}"
    if not isinstance(data["check"], str) or not data["check"]:
        return "check is not a non-empty string"
    if not isinstance(data["code"], str) or not _CODE.fullmatch(data["code"]):
        return "code is not a kebab-case word"
    if not isinstance(data["severity"], str) or data["severity"] not in {s.value for s in Severity}:
        return "severity is not critical, warning or info"
    for key in ("message", "advice"):
        if key in data and not isinstance(data[key], str):
            return f"{key} is not a string"
    for key in ("path", "subject"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"{key} is neither a string nor null"
    details = data.get("details", {})
    if not isinstance(details, dict):
        return "details is not an object"
    if "path_b64" in details and not isinstance(details["path_b64"], str):
        return "details.path_b64 is not a string"
    return ""


def _check_field_problem(key: str, value: Any) -> str:
    expected = {
        "name": str,
        "status": str,
        "reason": str,
        "seconds": (int, float),
        "stats": dict,
        "truncated": bool,
        "covers": str,
        "category": str,
    }.get(key)
    if key == "not_listed":
        return _not_listed_problem(value)
    if expected is None:
        return ""
    if not isinstance(value, expected) or (key == "seconds" and (isinstance(value, bool) or value < 0)):
        return f"{key} has the wrong type"
    if key == "status" and value not in {s.value for s in Status}:
        return f"status {value!r} is not a check status"
    if key == "name" and not value:
        return "name is empty"
    return ""


def _not_listed_problem(value: Any) -> str:
    if not isinstance(value, list):
        return "not_listed is not a list"
    for group in value:
        if not isinstance(group, dict) or not isinstance(group.get("code"), str):
            return "not_listed holds a group without a code"
        if group.get("severity") not in {s.value for s in Severity}:
            return "not_listed holds a group without a severity"
        count = group.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return "not_listed holds a group without a count"
        for key in ("path", "subject", "last"):
            if group.get(key) is not None and not isinstance(group[key], str):
                return f"not_listed holds a {key} that is not a string"
    return ""


class _Check:
    """One check being read: its fields, its counts and the findings kept of each code."""

    def __init__(self, keep: int, budget: List[int]):
        self.fields: Dict[str, Any] = {}
        self.keep = keep
        self.budget = budget  # characters of findings the report may still keep, shared by its checks
        self.findings = []
        self.by_severity = {s.value: 0 for s in Severity}
        self.by_group: Dict[Tuple[str, str], int] = {}

    def add(self, finding: Finding, length: int) -> None:
        group = (finding.severity.value, finding.code)
        seen = self.by_group.get(group, 0)
        self.by_group[group] = seen + 1
        self.by_severity[finding.severity.value] += 1
        if seen < self.keep and length <= self.budget[0]:
            self.budget[0] -= length
            self.findings.append(finding)

    @classmethod
    def factory(cls, keep: int, budget: List[int]) -> Callable[[], _Check]:
        return lambda: cls(keep, budget)

    def result(self) -> CheckResult:
        missing = _CHECK_FIELDS - set(self.fields) - {"findings"}
        if missing:
            raise ReportError(f"a check lacks {sorted(missing)[0]!r}")
        data = dict(self.fields)
        data["findings"] = []
        check = CheckResult.from_dict(data)
        check.findings = self.findings
        cut = len(self.findings) < sum(self.by_group.values())
        if cut or check.truncated:
            if not check.truncated or not isinstance(check.stats.get("findings_by_severity"), dict):
                counted = dict(self.by_severity)
                for group in check.not_listed:
                    counted[group.severity.value] += group.count
                check.stats["findings_by_severity"] = counted
            check.truncated = True
        check.group_counts = dict(self.by_group)
        return check


def read_report(
    handle: IO[bytes],
    max_bytes: int = DEFAULT_MAX_BYTES,
    keep: int = KEEP_PER_CODE,
    on_finding: Callable[[Finding], None] | None = None,
) -> Report:
    """The report in `handle` (a binary file), with at most `keep` findings kept per check and
    (severity, code) and every count complete; `on_finding` sees every finding. ReportError when it
    is not a valid report."""
    text = _Text(handle, max_bytes)
    decoder = json.JSONDecoder()
    top: Dict[str, Any] = {}
    checks = []
    if text.peek() != "{":
        raise ReportError("not JSON: it does not start with '{'" if text.peek() else "empty")
    budget = [KEEP_CHARS]
    for key in _members(text, decoder):
        if key == "checks":
            checks = list(_read_checks(text, decoder, _Check.factory(keep, budget), on_finding))
            top[key] = None
        else:
            top[key] = text.value(decoder)
    if text.peek() != "":
        raise ReportError(f"extra data after the report at character {text.where()}")
    return _assemble(top, checks)


def _read_checks(text: _Text, decoder: json.JSONDecoder, new_check, on_finding) -> Iterator[CheckResult]:
    for number, _ in enumerate(_elements(text)):
        check = new_check()
        for key in _members(text, decoder):
            if key == "findings":
                _read_findings(text, decoder, check, number, on_finding)
                continue
            value = text.value(decoder)
            problem = _check_field_problem(key, value)
            if problem:
                raise ReportError(f"checks/{number}: {problem}")
            check.fields[key] = value
        check.fields.setdefault("findings", None)
        yield check.result()


def _read_findings(text: _Text, decoder: json.JSONDecoder, check: _Check, number: int, on_finding) -> None:
    check.fields["findings"] = None
    for index, _ in enumerate(_elements(text)):
        data = text.value(decoder)
        problem = finding_problem(data)
        if problem:
            raise ReportError(f"checks/{number}/findings/{index}: {problem}")
        try:
            finding = Finding.from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ReportError(f"checks/{number}/findings/{index}: {error}") from None
        check.add(finding, text.last_length)
        if on_finding is not None:
            on_finding(finding)


def _assemble(top: Dict[str, Any], checks) -> Report:
    missing = sorted(_TOP_FIELDS - set(top))
    if missing:
        raise ReportError(f"not an fsaudit report: it lacks {missing[0]!r}")
    if top["format"] != REPORT_FORMAT:
        raise ReportError(f"not an fsaudit report (expected format {REPORT_FORMAT!r})")
    for key in ("fsaudit_version", "root", "started", "finished"):
        if not isinstance(top[key], str):
            raise ReportError(f"{key} is not a string")
    host = top["host"]
    if not isinstance(host, dict) or not all(isinstance(v, str) for v in host.values()):
        raise ReportError("host is not an object of strings")
    window = top.get("window")
    if window is not None and not (
        isinstance(window, dict)
        and {"start", "end"} <= set(window)
        and all(v is None or isinstance(v, str) for v in window.values())
    ):
        raise ReportError("window is neither null nor an object with a start and an end")
    if top.get("uid") is not None and (isinstance(top["uid"], bool) or not isinstance(top["uid"], int)):
        raise ReportError("uid is not a number")
    if "interrupted" in top and not isinstance(top["interrupted"], bool):
        raise ReportError("interrupted is not true or false")
    data = {key: value for key, value in top.items() if key != "checks"}
    report = Report.from_dict({**data, "checks": []})
    report.checks = checks
    if top["status"] != report.status.value:
        raise ReportError(f"status is {top['status']!r} but the checks add up to {report.status.value!r}")
    return report
