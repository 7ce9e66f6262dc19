"""The one result type that crosses from checkers to renderers and from a VM to the fleet."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Tuple, Union

from fsaudit.escape import json_inert

REPORT_FORMAT = "fsaudit-report/1"
# The reason of a check that ran to the end over nothing: an OK that verified nothing says so.
NOTHING_FOUND = "nothing of this kind was found to check"


class Severity(str, Enum):
    """How bad one finding is: critical = damaged or gone, warning = at risk, info = context."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is worse; sort with `-rank` to put the worst first."""
        return _SEVERITY_RANK[self]


class Status(str, Enum):
    """The verdict of one check, or of the whole audit."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "skipped": 0, "warning": 1, "critical": 2, "unknown": 3}[self.value]

    @property
    def rank(self) -> int:
        """Higher is worse: critical wins over unknown, unknown over warning (DESIGN.md, exit codes).
        Sort with `-rank` to put the worst first."""
        return _STATUS_RANK[self]


# The one ranking of statuses and severities: everything that sorts or picks "the worst" uses these.
_STATUS_RANK = {Status.SKIPPED: 0, Status.OK: 1, Status.WARNING: 2, Status.UNKNOWN: 3, Status.CRITICAL: 4}
_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


def worst(statuses) -> Status:
    """The status that wins among `statuses` (ok when there are none)."""
    result = Status.OK
    for status in statuses:
        status = Status(status)
        if status is not Status.SKIPPED and status.rank > result.rank:
            result = status
    return result


def display_path(path: Union[str, bytes]) -> tuple[str, str | None]:
    """A path as report text, plus its raw bytes in base64 when they are not valid UTF-8."""
    if isinstance(path, str):
        raw = path.encode("utf-8", "surrogateescape")
    else:
        raw = bytes(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), base64.b64encode(raw).decode("ascii")


_PLAIN = (int, float, bool, type(None))


def _clean(value: Any) -> Any:
    """Make `value` JSON-safe: bytes and undecodable text become escaped text."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        # The usual details: text keys and plain values, taken as they are (a walk may report
        # tens of thousands of findings).
        return {
            (k if type(k) is str and k.isascii() else str(_clean(k))): (
                v if type(v) in _PLAIN or (type(v) is str and v.isascii()) else _clean(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, str):
        # Most text is ASCII, which needs nothing (a finding per line of a huge log is made often).
        if value.isascii():
            return value
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, bytes):
        return display_path(value)[0]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(_clean(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    return value


def dumps(data: Any, indent: int | None = None) -> str:
    """`data` as JSON text: compact unless `indent` is given, non-ASCII text as it is, except the
    characters that could drive a terminal (DEL, C1 controls, line separators, bidirectional
    overrides), written as `\\u` escapes (fsaudit.escape.json_inert).

    orjson writes the same JSON as the standard encoder about twenty times faster (15,000 findings:
    3 ms against 60 ms, all of it at the end of an audit, after the checks); the text differs only
    in how a few numbers are spelled (`1e-7`, not `1e-07`). It is used where it is installed and
    the data suits it; otherwise (a VM running the fleet's zipapp, a number beyond 64 bits, text
    with lone surrogates, an indent other than 2) the standard encoder writes it."""
    if indent in (None, 2):
        try:
            import orjson
        except ImportError:
            pass
        else:
            try:
                text = orjson.dumps(data, option=orjson.OPT_INDENT_2 if indent else 0).decode("utf-8")
            except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
                pass
            else:
                return json_inert(text)
    separators = None if indent else (",", ":")
    return json_inert(json.dumps(data, indent=indent, ensure_ascii=False, separators=separators))


@dataclass
class Finding:
    """One thing a checker found: damage, risk, or context, with what to do about it."""

    check: str
    code: str
    severity: Severity
    message: str
    path: str | None = None
    subject: str | None = None
    details: Dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    def __post_init__(self):
        if type(self.severity) is not Severity:
            self.severity = Severity(self.severity)
        if self.path is not None:
            text, b64 = display_path(self.path)
            self.path = text
            if b64:
                self.details = {**self.details, "path_b64": b64}
        self.details = _clean(self.details)
        self.message = _clean(self.message)
        if self.subject is not None:
            self.subject = _clean(self.subject)

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "code": self.code,
            "severity": self.severity.value,
            "path": self.path,
            "subject": self.subject,
            "message": self.message,
            "details": self.details,
            "advice": self.advice,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Finding:
        return cls(
            check=data["check"],
            code=data["code"],
            severity=Severity(data["severity"]),
            message=data.get("message", ""),
            path=data.get("path"),
            subject=data.get("subject"),
            details=dict(data.get("details") or {}),
            advice=data.get("advice") or "",
        )


@dataclass
class NotListed:
    """Findings of one group that the check made but the report does not list: past the check's cap
    (`Checker.cap`), the runner counts them instead. The group is the fields the checker caps by
    (`Checker.cap_by`); those it does not group by are None."""

    code: str
    severity: Severity
    count: int
    path: str | None = None
    subject: str | None = None
    last: str = ""  # the message of the last one not listed (when, what)

    def __post_init__(self):
        self.severity = Severity(self.severity)

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "count": self.count,
            "path": self.path,
            "subject": self.subject,
            "last": self.last,
        }

    @classmethod
    def from_dict(cls, data: dict) -> NotListed:
        return cls(
            code=data["code"],
            severity=Severity(data["severity"]),
            count=int(data["count"]),
            path=data.get("path"),
            subject=data.get("subject"),
            last=data.get("last") or "",
        )


@dataclass
class CheckResult:
    """What one checker did: its status, why, how long, its counters and its findings."""

    name: str
    status: Status
    reason: str = ""
    seconds: float = 0.0
    stats: Dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    findings: List[Finding] = field(default_factory=list)
    # What the checker declares about itself, so renderers and the fleet read data, not names:
    # what it covers in a customer's words, and its category in the fleet view.
    covers: str = ""
    category: str = ""
    # Groups of findings past the checker's cap: counted, not listed.
    not_listed: List[NotListed] = field(default_factory=list)
    # Findings per (severity, code) when the list was cut while loading (not part of the JSON):
    # renderers say "N more" from it.
    group_counts: Dict[Tuple[str, str], int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.status = Status(self.status)

    def counts(self) -> Dict[str, int]:
        """Findings per severity (the full count even when the list was truncated)."""
        counted = self.stats.get("findings_by_severity")
        if self.truncated and isinstance(counted, dict):
            return {s.value: int(counted.get(s.value, 0)) for s in Severity}
        result = {s.value: 0 for s in Severity}
        for finding in self.findings:
            result[finding.severity.value] += 1
        for group in self.not_listed:
            result[group.severity.value] += group.count
        return result

    def unlisted(self, severity: Severity, code: str) -> List[NotListed]:
        """The groups of (severity, code) the check counted but did not list."""
        return [g for g in self.not_listed if g.code == code and g.severity is Severity(severity)]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status.value,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "stats": _clean(self.stats),
            "truncated": self.truncated,
            "covers": self.covers,
            "category": self.category,
            "not_listed": [group.to_dict() for group in self.not_listed],
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: dict) -> CheckResult:
        return cls(
            name=data["name"],
            status=Status(data["status"]),
            reason=data.get("reason") or "",
            seconds=float(data.get("seconds") or 0.0),
            stats=dict(data.get("stats") or {}),
            truncated=bool(data.get("truncated")),
            findings=[Finding.from_dict(f) for f in data.get("findings") or []],
            covers=data.get("covers") or "",
            category=data.get("category") or "",
            not_listed=[NotListed.from_dict(g) for g in data.get("not_listed") or []],
        )


def _uid(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


@dataclass
class Report:
    """The audit of one root: what every check found. Crosses from a VM to renderers as JSON."""

    host: Dict[str, str]
    root: str
    started: str
    finished: str
    checks: List[CheckResult] = field(default_factory=list)
    window: Dict[str, str | None] | None = None
    fsaudit_version: str = ""
    format: str = REPORT_FORMAT
    # The effective uid the audit ran as: what a non-root audit could not read is not damage.
    uid: int | None = None
    # Stopped before every check ran to the end (Ctrl-C, SIGTERM): the report covers what was done.
    interrupted: bool = False

    @property
    def status(self) -> Status:
        return worst(check.status for check in self.checks)

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def findings(self):
        for check in self.checks:
            yield from check.findings

    def check(self, name: str) -> CheckResult | None:
        for check in self.checks:
            if check.name == name:
                return check
        return None

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "fsaudit_version": self.fsaudit_version,
            "host": dict(self.host),
            "root": self.root,
            "uid": self.uid,
            "window": self.window,
            "started": self.started,
            "finished": self.finished,
            "status": self.status.value,
            "interrupted": self.interrupted,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self, indent: int | None = None) -> str:
        """The report as JSON; compact unless `indent` is given (Python's JSON encoder is several
        times slower when it indents, and a report can hold 200,000 findings)."""
        return dumps(self.to_dict(), indent) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ValueError(f"not an fsaudit report (expected format {REPORT_FORMAT!r})")
        return cls(
            format=data["format"],
            fsaudit_version=data.get("fsaudit_version") or "",
            host=dict(data.get("host") or {}),
            root=data.get("root") or "/",
            uid=_uid(data.get("uid")),
            window=data.get("window"),
            started=data.get("started") or "",
            finished=data.get("finished") or "",
            checks=[CheckResult.from_dict(c) for c in data.get("checks") or []],
            interrupted=data.get("interrupted") is True,
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))
