"""`fsaudit fleet-report`: the fleet view of one or more result directories (shards merge).

Hosts x checks sorted worst first, totals (damaged OS files, damaged databases, no report), the hosts
per finding code and per damaged subject (which VMs share a damaged package), and links to each VM's
own report. Rendered as text, HTML (self-contained, every value escaped) or JSON.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple

from fsaudit.errors import FsauditError
from fsaudit.fleet.remote import HostResult, validate_report
from fsaudit.fleet.results import load_report_text, read_records, write_atomic
from fsaudit.model import Report, Severity, Status, worst

FLEET_FORMAT = "fsaudit-fleet-report/1"
# Which checks stand for which kind of damage in the totals (checks not named here still appear in
# the matrix and in the per-code lists).
CATEGORIES = {
    "os_files": ("debian", "rpm"),
    "databases": ("postgres", "mysql", "sqlite", "ldap", "zodb"),
}
# Statuses worst first, as the fleet's text lists them.
_STATUSES = [status.value for status in sorted(Status, key=lambda s: -s.rank)]
_LISTED = 20  # hosts named per finding code in the text view


@dataclass
class HostView:
    record: HostResult
    report: Report | None
    directory: str
    problem: str = ""  # why a report file listed in the record could not be used


def collect(directories: List[str]) -> List[HostView]:
    """Every host of the result directories; a host in several (a re-run shard) counts once, latest wins.
    Reports without a host record (from the Ansible playbook) count as hosts whose report came back."""
    chosen: Dict[str, HostView] = {}
    for directory in directories:
        seen_reports = set()
        for record in read_records(directory):
            view = _view(directory, record)
            if record.report:
                seen_reports.add(os.path.basename(record.report))
            _keep(chosen, view)
        for name in _report_files(directory):
            if name not in seen_reports:
                _keep(chosen, _bare_report(directory, name))
    return sorted(chosen.values(), key=_order)


def _report_files(directory: str) -> List[str]:
    try:
        names = os.listdir(os.path.join(directory, "reports"))
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


def _view(directory: str, record: HostResult) -> HostView:
    view = HostView(record, None, directory)
    if record.outcome == "report":
        text = load_report_text(directory, record)
        try:
            view.report = validate_report(text) if text is not None else None
        except ValueError as error:
            view.problem = f"{record.report}: {error}"
        if view.report is None:
            view.problem = view.problem or f"{record.report} is missing"
            record.status = Status.UNKNOWN.value
    return view


def _bare_report(directory: str, name: str) -> HostView:
    stem = name[: -len(".json")]
    record = HostResult(name=stem, address="", outcome="report", status="unknown", report=f"reports/{name}")
    view = _view(directory, record)
    if view.report is not None:
        record.status = view.report.status.value
        record.finished = view.report.finished
    return view


def _keep(chosen: Dict[str, HostView], view: HostView) -> None:
    old = chosen.get(view.record.name)
    if old is None or (view.record.finished or "") >= (old.record.finished or ""):
        chosen[view.record.name] = view


def _criticals(view: HostView) -> int:
    if view.report is None:
        return 0
    return sum(check.counts()["critical"] for check in view.report.checks)


def _order(view: HostView) -> Tuple[int, int, str]:
    return -Status(view.record.status).rank, -_criticals(view), view.record.name


def fleet_data(views: List[HostView], links: Dict[str, str] | None = None) -> Dict[str, Any]:
    """The fleet view as plain data (the JSON output; text and HTML render it)."""
    links = links or {}
    checks: List[str] = sorted({c.name for v in views if v.report for c in v.report.checks})
    hosts = []
    codes: Dict[Tuple[str, str], Dict[str, Any]] = {}
    totals: Dict[str, Any] = {"hosts": len(views), "status": {}, "no_report": {}}
    totals.update({category: 0 for category in CATEGORIES})
    for view in views:
        record = view.record
        totals["status"][record.status] = totals["status"].get(record.status, 0) + 1
        if record.outcome != "report" or view.report is None:
            totals["no_report"][record.outcome] = totals["no_report"].get(record.outcome, 0) + 1
        cells = {}
        damaged = set()
        for check in view.report.checks if view.report else []:
            counts = check.counts()
            cells[check.name] = {"status": check.status.value, "critical": counts["critical"],
                                 "warning": counts["warning"], "reason": check.reason}  # fmt: skip
            for finding in check.findings:
                if finding.severity.value == "critical":
                    damaged.add(check.name)
                _add_code(codes, finding, record.name)
        for category, names in CATEGORIES.items():
            totals[category] += bool(damaged & set(names))
        hosts.append({
            "name": record.name,
            "address": record.address,
            "status": record.status,
            "outcome": record.outcome,
            "message": view.problem or record.message,
            "mode": record.mode,
            "seconds": record.seconds,
            "checks": cells,
            "report_json": os.path.join(view.directory, record.report) if view.report else None,
            "report_html": links.get(record.name),
        })  # fmt: skip
    code_list = sorted(
        codes.values(), key=lambda c: (-Severity(c["severity"]).rank, -len(c["hosts"]), c["check"], c["code"])
    )
    for entry in code_list:
        entry["hosts"] = sorted(entry["hosts"])
        entry["subjects"] = {
            s: sorted(h) for s, h in sorted(entry["subjects"].items(), key=lambda i: -len(i[1]))
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


def _add_code(codes: Dict[Tuple[str, str], Dict[str, Any]], finding, host: str) -> None:
    entry = codes.setdefault(
        (finding.check, finding.code),
        {"check": finding.check, "code": finding.code, "severity": finding.severity.value, "hosts": set(),
         "subjects": {}},
    )  # fmt: skip
    if finding.severity.rank > Severity(entry["severity"]).rank:
        entry["severity"] = finding.severity.value
    entry["hosts"].add(host)
    if finding.subject:
        entry["subjects"].setdefault(finding.subject, set()).add(host)


def write_vm_reports(views: List[HostView], start: str) -> Tuple[Dict[str, str], str]:
    """Each VM's own HTML report beside its JSON one; returns the links (relative to `start`) and a
    note when this fsaudit cannot render HTML."""
    from fsaudit.report import RENDERERS, render

    if "html" not in RENDERERS:
        return {}, "per-VM HTML reports were not written: this fsaudit has no html renderer"
    links = {}
    for view in views:
        if view.report is None or not view.record.report:
            continue
        path = os.path.join(view.directory, view.record.report[: -len(".json")] + ".html")
        try:
            page = render(view.report, "html")
        except (FsauditError, ImportError) as error:  # e.g. the html renderer's module is not installed
            return {}, f"per-VM HTML reports were not written: {error}"
        write_atomic(path, page.encode("utf-8"))
        links[view.record.name] = os.path.relpath(path, start)
    return links, ""


def render_fleet(directories: List[str], fmt: str, vm_reports: bool = True, output: str | None = None
                 ) -> Tuple[str, int]:  # fmt: skip
    """The fleet report of `directories` in `fmt` (text, html, json) and its exit code (the worst host's)."""
    views = collect(directories)
    links, note = {}, ""
    # links in the page are relative to where the page is written, so the directory can be moved whole
    start = os.path.dirname(os.path.abspath(output)) if output and output != "-" else os.getcwd()
    if fmt == "html" and vm_reports:
        links, note = write_vm_reports(views, start)
    data = fleet_data(views, links)
    if note:
        data["note"] = note
    code = Status(data["status"]).exit_code
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n", code
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
    lines = [f"fsaudit fleet report: {data['status'].upper()}", _totals_line(data["totals"])]
    if data["totals"]["no_report"]:
        lines.append(
            "no report: " + ", ".join(f"{n} {k}" for k, n in sorted(data["totals"]["no_report"].items()))
        )
    if data.get("note"):
        lines.append(f"note: {data['note']}")
    lines.append("")
    checks = data["checks"]
    width = max([4] + [len(h["name"]) for h in data["hosts"]])
    columns = [max(len(c), 7) for c in checks]
    lines.append(
        "  ".join([f"{'host':<{width}}", f"{'status':<8}"] + [f"{c:<{w}}" for c, w in zip(checks, columns)])
    )
    for host in data["hosts"]:
        row = [f"{host['name']:<{width}}", f"{host['status']:<8}"]
        if host["outcome"] != "report" or not host["checks"]:
            row.append(f"{host['outcome']}: {host['message']}")
        else:
            row += [f"{_cell_text(host['checks'].get(c)):<{w}}" for c, w in zip(checks, columns)]
        lines.append("  ".join(row).rstrip())
    if data["codes"]:
        lines += ["", "hosts per finding code:"]
        for entry in data["codes"]:
            names = entry["hosts"]
            shown = ", ".join(names[:_LISTED]) + (
                f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else ""
            )
            lines.append(
                f"  {entry['check']} {entry['code']} ({entry['severity']}, {len(names)} hosts): {shown}"
            )
            for subject, hosts in list(entry["subjects"].items())[:_LISTED]:
                if len(hosts) > 1:
                    lines.append(f"      {subject}: {len(hosts)} hosts: {', '.join(hosts[:_LISTED])}")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}th{background:#f4f4f4}
.critical{background:#f8d0d0}.unknown{background:#f3e2b8}.warning{background:#fbf3c4}.ok{background:#d9f2d9}
.skipped{color:#888}
"""


def render_fleet_html(data: Dict[str, Any]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>fsaudit fleet report</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>fsaudit fleet report: <span class=\"{e(data['status'])}\">{e(data['status'])}</span></h1>",
           f"<p>{e(_totals_line(data['totals']))}</p>"]  # fmt: skip
    if data.get("note"):
        out.append(f"<p><em>{e(data['note'])}</em></p>")
    checks = data["checks"]
    out.append("<table><tr><th>host</th><th>status</th>" + "".join(f"<th>{e(c)}</th>" for c in checks)
               + "<th>report</th></tr>")  # fmt: skip
    for host in data["hosts"]:
        row = [f"<td>{e(host['name'])}</td>", f'<td class="{e(host["status"])}">{e(host["status"])}</td>']
        if host["outcome"] != "report" or not host["checks"]:
            row.append(f'<td colspan="{max(len(checks), 1)}">{e(host["outcome"])}: {e(host["message"])}</td>')
        else:
            for name in checks:
                cell = host["checks"].get(name)
                css = e(cell["status"]) if cell else ""
                title = e(cell["reason"]) if cell and cell["reason"] else ""
                row.append(f'<td class="{css}" title="{title}">{e(_cell_text(cell))}</td>')
        link = host.get("report_html") or host.get("report_json")
        row.append(
            f'<td><a href="{e(link)}">{"HTML" if host.get("report_html") else "JSON"}</a></td>'
            if link
            else "<td></td>"
        )
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</table>")
    if data["codes"]:
        out.append("<h2>Hosts per finding code</h2><table><tr><th>check</th><th>code</th><th>severity</th>"
                   "<th>hosts</th><th>shared subjects</th></tr>")  # fmt: skip
        for entry in data["codes"]:
            shared = "<br>".join(
                f"{e(s)}: {e(', '.join(h))}" for s, h in entry["subjects"].items() if len(h) > 1
            )
            out.append(f"<tr><td>{e(entry['check'])}</td><td>{e(entry['code'])}</td>"
                       f"<td class=\"{e(entry['severity'])}\">{e(entry['severity'])}</td>"
                       f"<td>{len(entry['hosts'])}: {e(', '.join(entry['hosts']))}</td>"
                       f"<td>{shared}</td></tr>")  # fmt: skip
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)
