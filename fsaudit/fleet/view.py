"""`fsaudit fleet-report`: the fleet view of one or more result directories (shards merge).

Hosts x checks sorted worst first, totals (damaged OS files, damaged databases, no report), the hosts
per finding code and per damaged subject (which VMs share a damaged package), and links to each VM's
own report. Rendered as text, HTML (self-contained, every value escaped) or JSON.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Set, Tuple

from fsaudit.errors import FsauditError
from fsaudit.escape import inert
from fsaudit.fleet.reader import DEFAULT_MAX_BYTES, read_report
from fsaudit.fleet.remote import HostResult
from fsaudit.fleet.results import open_regular, read_records, write_atomic
from fsaudit.model import Finding, Severity, Status, dumps, worst
from fsaudit.report.html import HTML_LIST_LIMIT

LOG = logging.getLogger(__name__)

FLEET_FORMAT = "fsaudit-fleet-report/1"
# Totals of hosts with damage in each of these fleet categories (what checks declare as `category`).
TOTALS = {"os_files": "os-files", "databases": "databases"}
# Statuses worst first, as the fleet's text lists them.
_STATUSES = [status.value for status in sorted(Status, key=lambda s: -s.rank)]
_LISTED = 20  # hosts named per finding code in the text view
SUBJECTS_PER_CODE = 100  # distinct subjects remembered per host and finding code


@dataclass
class CodeSeen:
    """One finding code as one host reported it: its worst severity and (some of) its subjects."""

    check: str
    code: str
    severity: Severity
    subjects: Set[str] = field(default_factory=set)


@dataclass
class HostSummary:
    """What the fleet view needs from one VM's report, read in bounded memory: its checks' statuses
    and counts, and each finding code with its subjects. The report itself stays on disk."""

    status: str
    finished: str
    cells: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    criticals: int = 0
    damaged_categories: Set[str] = field(default_factory=set)
    codes: Dict[Tuple[str, str], CodeSeen] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        key = (finding.check, finding.code)
        seen = self.codes.get(key)
        if seen is None:
            seen = self.codes[key] = CodeSeen(finding.check, finding.code, finding.severity)
        elif finding.severity.rank > seen.severity.rank:
            seen.severity = finding.severity
        if finding.subject and len(seen.subjects) < SUBJECTS_PER_CODE:
            seen.subjects.add(finding.subject)


@dataclass
class HostView:
    record: HostResult
    summary: HostSummary | None
    directory: str
    problem: str = ""  # why a report file listed in the record could not be used

    @property
    def report_path(self) -> str:
        return os.path.join(self.directory, self.record.report or "")


def summarise(path: str, max_bytes: int) -> HostSummary:
    """The HostSummary of the report at `path`, read streaming (ValueError when it is not one)."""
    collected = HostSummary(status="", finished="")
    try:
        with open_regular(path) as handle:
            report = read_report(handle, max_bytes, keep=0, on_finding=collected.add)
    except OSError as error:
        raise ValueError(f"cannot be read: {error.strerror}") from None
    collected.status = report.status.value
    collected.finished = report.finished
    for check in report.checks:
        counts = check.counts()
        collected.cells[check.name] = {"status": check.status.value, "critical": counts["critical"],
                                       "warning": counts["warning"], "reason": check.reason}  # fmt: skip
        collected.criticals += counts["critical"]
        if counts["critical"] and check.category:
            collected.damaged_categories.add(check.category)
    return collected


def collect(directories: List[str], max_bytes: int = DEFAULT_MAX_BYTES) -> List[HostView]:
    """Every host of the result directories; a host in several (a re-run shard) counts once, latest wins.
    Reports without a host record (from the Ansible playbook) count as hosts whose report came back.
    Each report is read streaming and only its summary is kept, so memory does not grow with the
    size of the reports."""
    chosen: Dict[str, HostView] = {}
    for directory in directories:
        seen_reports = set()
        for record in read_records(directory):
            view = _view(directory, record, max_bytes)
            if record.report:
                seen_reports.add(os.path.basename(record.report))
            _keep(chosen, view)
        for name in _report_files(directory):
            if name not in seen_reports:
                _keep(chosen, _bare_report(directory, name, max_bytes))
    return sorted(chosen.values(), key=_order)


def _report_files(directory: str) -> List[str]:
    try:
        names = os.listdir(os.path.join(directory, "reports"))
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


def _view(directory: str, record: HostResult, max_bytes: int) -> HostView:
    view = HostView(record, None, directory)
    if record.outcome == "report":
        if not record.report:
            view.problem = "the host record names no report file"
        else:
            try:
                view.summary = summarise(view.report_path, max_bytes)
            except ValueError as error:
                view.problem = f"{record.report}: {error}"
        if view.summary is None:
            record.status = Status.UNKNOWN.value
    return view


def _bare_report(directory: str, name: str, max_bytes: int) -> HostView:
    stem = name[: -len(".json")]
    record = HostResult(name=stem, address="", outcome="report", status="unknown", report=f"reports/{name}")
    view = _view(directory, record, max_bytes)
    if view.summary is not None:
        record.status = view.summary.status
        record.finished = view.summary.finished
    return view


def _keep(chosen: Dict[str, HostView], view: HostView) -> None:
    old = chosen.get(view.record.name)
    if old is None or (view.record.finished or "") >= (old.record.finished or ""):
        chosen[view.record.name] = view


def _order(view: HostView) -> Tuple[int, int, str]:
    criticals = view.summary.criticals if view.summary else 0
    return -Status(view.record.status).rank, -criticals, view.record.name


def fleet_data(views: List[HostView], links: Dict[str, str] | None = None) -> Dict[str, Any]:
    """The fleet view as plain data (the JSON output; text and HTML render it)."""
    links = links or {}
    checks: List[str] = sorted({name for v in views if v.summary for name in v.summary.cells})
    hosts = []
    codes: Dict[Tuple[str, str], Dict[str, Any]] = {}
    totals: Dict[str, Any] = {"hosts": len(views), "status": {}, "no_report": {}}
    totals.update({total: 0 for total in TOTALS})
    categories: Dict[str, int] = {}
    for view in views:
        record = view.record
        totals["status"][record.status] = totals["status"].get(record.status, 0) + 1
        if record.outcome != "report" or view.summary is None:
            totals["no_report"][record.outcome] = totals["no_report"].get(record.outcome, 0) + 1
        summary = view.summary
        for category in summary.damaged_categories if summary else ():
            categories[category] = categories.get(category, 0) + 1
        for seen in summary.codes.values() if summary else ():
            _add_code(codes, seen, record.name)
        hosts.append({
            "name": record.name,
            "address": record.address,
            "status": record.status,
            "outcome": record.outcome,
            "message": view.problem or record.message,
            "mode": record.mode,
            "seconds": record.seconds,
            "checks": summary.cells if summary else {},
            "report_json": view.report_path if summary else None,
            "report_html": links.get(record.name),
        })  # fmt: skip
    for total, category in TOTALS.items():
        totals[total] = categories.get(category, 0)
    totals["damaged_by_category"] = dict(sorted(categories.items()))
    code_list = sorted(
        codes.values(),
        key=lambda c: (-Severity(c["severity"]).rank, -len(c["hosts"]), c["check"], c["code"]),
    )
    for entry in code_list:
        entry["hosts"] = sorted(entry["hosts"])
        entry["subjects"] = {
            s: sorted(h) for s, h in sorted(entry["subjects"].items(), key=lambda i: (-len(i[1]), i[0]))
        }
    return {
        "format": FLEET_FORMAT,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": worst(Status(h["status"]) for h in hosts).value,
        "totals": totals,
        "checks": checks,
        "hosts": hosts,
        "codes": code_list,
    }


def _add_code(codes: Dict[Tuple[str, str], Dict[str, Any]], seen: CodeSeen, host: str) -> None:
    entry = codes.setdefault(
        (seen.check, seen.code),
        {"check": seen.check, "code": seen.code, "severity": seen.severity.value, "hosts": set(),
         "subjects": {}},
    )  # fmt: skip
    if seen.severity.rank > Severity(entry["severity"]).rank:
        entry["severity"] = seen.severity.value
    entry["hosts"].add(host)
    for subject in seen.subjects:
        entry["subjects"].setdefault(subject, set()).add(host)


def write_vm_reports(views: List[HostView], start: str, max_bytes: int) -> Tuple[Dict[str, str], str]:
    """Each VM's own HTML report beside its JSON one; returns the links (relative to `start`) and a
    note when this fsaudit cannot render HTML. One report at a time is in memory, with its findings
    cut to what the page lists."""
    from fsaudit.report import RENDERERS, render

    if "html" not in RENDERERS:
        return {}, "per-VM HTML reports were not written: this fsaudit has no html renderer"
    links = {}
    for view in views:
        if view.summary is None or not view.record.report:
            continue
        path = os.path.join(view.directory, view.record.report[: -len(".json")] + ".html")
        try:
            with open_regular(view.report_path) as handle:
                report = read_report(handle, max_bytes, keep=HTML_LIST_LIMIT)
        except (OSError, ValueError) as error:
            LOG.debug("%s: cannot read it again for its HTML report: %s", view.report_path, error)
            continue
        try:
            page = render(report, "html")
        except (FsauditError, ImportError) as error:  # e.g. the html renderer's module is not installed
            return {}, f"per-VM HTML reports were not written: {error}"
        write_atomic(path, page.encode("utf-8"))
        links[view.record.name] = os.path.relpath(path, start)
    return links, ""


def render_fleet(directories: List[str], fmt: str, vm_reports: bool = True, output: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> Tuple[str, int]:  # fmt: skip
    """The fleet report of `directories` in `fmt` (text, html, json) and its exit code (the worst host's)."""
    views = collect(directories, max_bytes)
    links, note = {}, ""
    # links in the page are relative to where the page is written, so the directory can be moved whole
    start = os.path.dirname(os.path.abspath(output)) if output and output != "-" else os.getcwd()
    if fmt == "html" and vm_reports:
        links, note = write_vm_reports(views, start, max_bytes)
    data = fleet_data(views, links)
    if note:
        data["note"] = note
    code = Status(data["status"]).exit_code
    if fmt == "json":
        return dumps(data, 2) + "\n", code
    if fmt == "html":
        for host in data["hosts"]:
            if not host["report_html"] and host["report_json"]:
                host["report_json"] = os.path.relpath(host["report_json"], start)
        return render_fleet_html(data), code
    return render_fleet_text(data), code


def _cell_text(cell: Dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    status = cell["status"]
    if cell["critical"]:
        return f"CRIT {cell['critical']}"
    if cell["warning"]:
        return f"warn {cell['warning']}"
    return {"ok": "ok", "skipped": "skip", "unknown": "UNKN"}.get(status, status)


def _totals_line(totals: Dict[str, Any]) -> str:
    by_status = ", ".join(f"{totals['status'][s]} {s}" for s in _STATUSES if totals["status"].get(s))
    no_report = sum(totals["no_report"].values())
    return (f"{totals['hosts']} hosts: {by_status or 'none'}; damaged OS files on {totals['os_files']}, "
            f"damaged databases on {totals['databases']}, no report from {no_report}")  # fmt: skip


def render_fleet_text(data: Dict[str, Any]) -> str:
    """The fleet view for a terminal; every name and message from the hosts goes through `inert`."""
    lines = [f"fsaudit fleet report: {data['status'].upper()}", _totals_line(data["totals"])]
    if data["totals"]["no_report"]:
        lines.append(
            "no report: " + ", ".join(f"{n} {k}" for k, n in sorted(data["totals"]["no_report"].items()))
        )
    if data.get("note"):
        lines.append(f"note: {inert(data['note'])}")
    lines.append("")
    checks = [inert(c) for c in data["checks"]]
    names = {host["name"]: inert(host["name"]) for host in data["hosts"]}
    width = max([4] + [len(name) for name in names.values()])
    columns = [max(len(c), 7) for c in checks]
    lines.append(
        "  ".join([f"{'host':<{width}}", f"{'status':<8}"] + [f"{c:<{w}}" for c, w in zip(checks, columns)])
    )
    for host in data["hosts"]:
        row = [f"{names[host['name']]:<{width}}", f"{host['status']:<8}"]
        if host["outcome"] != "report" or not host["checks"]:
            row.append(f"{host['outcome']}: {inert(host['message'])}")
        else:
            row += [f"{_cell_text(host['checks'].get(c)):<{w}}" for c, w in zip(data["checks"], columns)]
        lines.append("  ".join(row).rstrip())
    if data["codes"]:
        lines += ["", "hosts per finding code:"]
        for entry in data["codes"]:
            hosts = [names.get(name, inert(name)) for name in entry["hosts"]]
            shown = ", ".join(hosts[:_LISTED]) + (
                f", ... ({len(hosts) - _LISTED} more)" if len(hosts) > _LISTED else ""
            )
            code = f"{inert(entry['check'])} {inert(entry['code'])}"
            lines.append(f"  {code} ({entry['severity']}, {len(hosts)} hosts): {shown}")
            for subject, sharing in list(entry["subjects"].items())[:_LISTED]:
                if len(sharing) > 1:
                    listed = ", ".join(names.get(name, inert(name)) for name in sharing[:_LISTED])
                    lines.append(f"      {inert(subject)}: {len(sharing)} hosts: {listed}")
    return "\n".join(lines) + "\n"


def render_fleet_html(data: Dict[str, Any]) -> str:
    """The fleet view as one self-contained HTML page (the Jinja template beside the VM report's, every
    value escaped)."""
    from fsaudit.report.html import environment

    jinja = environment()
    jinja.filters["cell"] = _cell_text
    page = jinja.get_template("fleet.html")
    return page.render(data=data, totals=_totals_line(data["totals"]))
