"""fleet-report over hand-made result directories (no ssh): merging, Ansible-style bare reports,
escaping in HTML, per-VM HTML links, and the progress line."""

import io
import json

from fsaudit.fleet.fanout import ProgressLine
from fsaudit.fleet.view import render_fleet
from fsaudit.model import CheckResult, Finding, Report, Status
from fsaudit.report import RENDERERS
from tests.conftest import fsaudit


def _report(host: str, subject: str, severity: str = "critical") -> Report:
    finding = Finding(
        "debian", "content-differs", severity, "content differs", path="/usr/bin/sed", subject=subject
    )
    status = {"critical": Status.CRITICAL, "warning": Status.WARNING}.get(severity, Status.OK)
    check = CheckResult("debian", status, findings=[finding], category="os-files")
    return Report(host={"hostname": host, "os": "Debian"}, root="/", started="2026-01-01T00:00:00+00:00",
                  finished="2026-01-01T00:01:00+00:00", checks=[check], fsaudit_version="0.1.0")  # fmt: skip


def _bare(directory, host, subject, severity="critical"):
    (directory / "reports").mkdir(parents=True, exist_ok=True)
    (directory / "reports" / f"{host}.json").write_text(_report(host, subject, severity).to_json())


def test_bare_reports_from_the_playbook_merge_and_share_subjects(tmp_path):
    _bare(tmp_path / "a", "vm1", "sed 4.9-1")
    _bare(tmp_path / "a", "vm2", "sed 4.9-1")
    _bare(tmp_path / "b", "vm3", "bash 5.2", "warning")
    data = json.loads(render_fleet([str(tmp_path / "a"), str(tmp_path / "b")], "json")[0])
    assert [h["name"] for h in data["hosts"]] == ["vm1", "vm2", "vm3"]
    assert data["totals"]["os_files"] == 2 and data["status"] == "critical"
    code = data["codes"][0]
    assert code["code"] == "content-differs" and code["subjects"]["sed 4.9-1"] == ["vm1", "vm2"]
    text = render_fleet([str(tmp_path / "a")], "text")[0]
    assert "sed 4.9-1: 2 hosts: vm1, vm2" in text


def test_html_escapes_what_the_hosts_sent(tmp_path):
    _bare(tmp_path, "vm1", "<script>alert(1)</script>")
    _bare(tmp_path, "vm2", "<script>alert(1)</script>")
    page, code = render_fleet([str(tmp_path)], "html", vm_reports=False)
    assert code == 2 and "<script>" not in page and "&lt;script&gt;" in page


def test_vm_html_reports_are_written_beside_the_json_and_linked(tmp_path, monkeypatch):
    _bare(tmp_path / "run", "vm1", "sed 4.9-1")
    monkeypatch.setitem(RENDERERS, "html", lambda report, colour=False: f"<p>{report.host['hostname']}</p>")
    page, _ = render_fleet([str(tmp_path / "run")], "html", output=str(tmp_path / "fleet.html"))
    assert (tmp_path / "run" / "reports" / "vm1.html").read_text() == "<p>vm1</p>"
    assert 'href="run/reports/vm1.html"' in page


def test_links_in_the_page_are_relative_to_where_it_is_written(tmp_path):
    _bare(tmp_path / "run", "vm1", "sed 4.9-1")
    (tmp_path / "pages").mkdir()
    run = fsaudit(
        "fleet-report", tmp_path / "run", "--format", "html", "--output", tmp_path / "pages" / "fleet.html"
    )
    page = (tmp_path / "pages" / "fleet.html").read_text()
    assert run.code == 2 and (
        'href="../run/reports/vm1.html"' in page or 'href="../run/reports/vm1.json"' in page
    )


def test_a_damaged_report_file_is_a_host_without_report(tmp_path):
    (tmp_path / "hosts").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "vm1.json").write_text("{not json")
    record = {
        "name": "vm1",
        "address": "vm1",
        "outcome": "report",
        "status": "ok",
        "report": "reports/vm1.json",
    }
    (tmp_path / "hosts" / "vm1.json").write_text(json.dumps(record))
    run = fsaudit("fleet-report", tmp_path, "--format", "json")
    host = json.loads(run.stdout)["hosts"][0]
    assert run.code == 3 and host["status"] == "unknown" and "not JSON" in host["message"]


def test_progress_line_names_the_slowest_hosts():
    line = ProgressLine(io.StringIO(), total=3, enabled=False)
    line.started("vm1")
    line.started("vm2")
    line.finished("vm2", failed=True)
    assert line.text().startswith("fleet: 1/3 done, 1 running, 1 failed; slowest: vm1 ")


def test_the_ansible_playbook_saves_reports_where_fleet_report_reads_them():
    import yaml

    from tests.conftest import REPO

    plays = yaml.safe_load((REPO / "contrib" / "ansible" / "fsaudit-audit.yml").read_text())
    audit = plays[1]
    assert audit["vars"]["ansible_pipelining"] is True  # Ansible writes no module files on the hosts
    run, save = audit["tasks"]
    assert "audit --format json" in run["ansible.builtin.shell"]
    assert save["delegate_to"] == "localhost"
    assert save["ansible.builtin.copy"]["dest"] == "{{ out }}/reports/{{ inventory_hostname }}.json"


def test_info_findings_rank_below_warnings_instead_of_crashing(tmp_path):
    # zodb `storage-checked`, postgres `checksums-disabled`: on a real fleet nearly every host sends one
    _bare(tmp_path, "vm1", "Data.fs", "info")
    _bare(tmp_path, "vm2", "sed 4.9-1", "warning")
    _bare(tmp_path, "vm3", "sed 4.9-1", "info")
    for fmt in ("text", "json", "html"):
        run = fsaudit("fleet-report", tmp_path, "--format", fmt, "--no-vm-reports")
        assert run.code == 1, run.stderr
    data = json.loads(fsaudit("fleet-report", tmp_path, "--format", "json").stdout)
    # one code seen as a warning on one host and as info on others counts as a warning
    assert [(c["code"], c["severity"]) for c in data["codes"]] == [("content-differs", "warning")]
    assert [h["name"] for h in data["hosts"]] == ["vm2", "vm1", "vm3"]
