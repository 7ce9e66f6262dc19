"""A VM's report can be as large as the VM likes: what `fsaudit fleet` takes in from a VM and what
`fleet-report` loads are bounded (a size cap with its own outcome, and streaming reads whose memory
does not grow with the report), against a real sshd on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fixtures.fleet import SshLab, host_vars, ini_inventory, sending
from fixtures.measured import run_measured
from tests.conftest import require_program

FINDINGS = 120_000  # about 55 MB of report: one VM where npm rewrote its whole tree
RSS_BOUND = 256 << 20  # the old readers took 0.4 to 1.2 GB for this report


def write_big_report(path: Path, findings: int = FINDINGS) -> Path:
    """A valid report of one damaged VM with `findings` critical findings, written streaming."""
    head = {
        "format": "fsaudit-report/1", "fsaudit_version": "0.1.0",
        "host": {"hostname": "npm-vm", "os": "Debian"}, "root": "/", "uid": 0, "window": None,
        "started": "2026-06-08T10:00:00+00:00", "finished": "2026-06-08T11:00:00+00:00", "status": "critical",
    }  # fmt: skip
    check = {"name": "debian", "status": "critical", "reason": "", "seconds": 3600.0,
             "stats": {"files_verified": findings}, "truncated": False,
             "covers": "system files (Debian packages)", "category": "os-files"}  # fmt: skip
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(head)[:-1] + ', "checks": [' + json.dumps(check)[:-1] + ', "findings": [')
        for number in range(findings):
            finding = {
                "check": "debian", "code": "content-differs", "severity": "critical",
                "path": f"/usr/lib/node_modules/npm/node_modules/p{number % 500}/lib/f{number}.js",
                "subject": f"nodejs 18.19.0+dfsg-6~deb12u{number % 7}",
                "message": "content differs from the packaged file",
                "details": {"package": "nodejs", "version": "18.19.0", "expected_md5": "0" * 32,
                            "actual_md5": "f" * 32},
                "advice": "reinstall the package nodejs",
            }  # fmt: skip
            out.write(("," if number else "") + json.dumps(finding))
        out.write("]}]}\n")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fleet-size")
    lab = SshLab(directory, require_program("sshd", "openssh-server"))
    require_program("ssh", "openssh-client")
    try:
        (port,) = lab.start("main")
        big = write_big_report(directory / "big.json")
        hosts = {"npm-vm": host_vars(port, fsaudit_command=sending(big))}
        lab.inventory = ini_inventory(directory / "inventory.ini", hosts)
        lab.big = big
        yield lab
    finally:
        lab.stop()


def fleet(lab, out: Path, *args: str):
    command = [sys.executable, "-m", "fsaudit", "fleet", str(lab.inventory), "--ssh-config", str(lab.config),
               "--out", str(out), *args]  # fmt: skip
    run, cost = run_measured(command)
    return run, cost.max_rss


def test_a_large_report_is_taken_in_and_viewed_in_bounded_memory(lab, tmp_path):
    out = tmp_path / "out"
    run, rss = fleet(lab, out)
    record = json.loads((out / "hosts" / "npm-vm.json").read_text())
    assert run.returncode == 2, run.stderr
    assert record["outcome"] == "report" and record["status"] == "critical"
    assert (out / "reports" / "npm-vm.json").read_bytes() == lab.big.read_bytes()  # kept exactly as sent
    assert rss < RSS_BOUND, f"fsaudit fleet peaked at {rss >> 20} MiB"

    view, cost = run_measured([sys.executable, "-m", "fsaudit", "fleet-report", str(out), "--format", "json"])
    rss = cost.max_rss
    data = json.loads(view.stdout)
    assert view.returncode == 2 and data["hosts"][0]["checks"]["debian"]["critical"] == FINDINGS
    assert len(data["codes"][0]["subjects"]) == 7  # which packages the damage is in
    assert rss < RSS_BOUND, f"fleet-report peaked at {rss >> 20} MiB"

    page = tmp_path / "fleet.html"
    html, cost = run_measured(
        [sys.executable, "-m", "fsaudit", "fleet-report", str(out), "--format", "html", "--output", str(page)]
    )
    rss = cost.max_rss
    vm_page = (out / "reports" / "npm-vm.html").read_text()
    assert html.returncode == 2 and "npm-vm" in page.read_text()
    assert "120,000" in vm_page  # the counts stay complete although only the first findings are listed
    assert rss < RSS_BOUND, f"fleet-report --format html peaked at {rss >> 20} MiB"


def test_a_report_over_the_size_cap_has_its_own_outcome(lab, tmp_path):
    out = tmp_path / "out"
    run, _ = fleet(lab, out, "--max-report-size", "16")
    record = json.loads((out / "hosts" / "npm-vm.json").read_text())
    assert run.returncode == 3, run.stderr
    assert record["outcome"] == "report-too-large" and record["status"] == "unknown"
    assert not list((out / "reports").iterdir())  # nothing of it is kept


def test_fleet_report_refuses_a_report_file_over_its_cap(lab, tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "npm-vm.json").write_bytes(lab.big.read_bytes())
    view, cost = run_measured(
        [
            sys.executable,
            "-m",
            "fsaudit",
            "fleet-report",
            str(tmp_path),
            "--format",
            "json",
            "--max-report-size",
            "16",
        ]
    )
    host = json.loads(view.stdout)["hosts"][0]
    assert view.returncode == 3 and host["status"] == "unknown"
    assert "larger than" in host["message"]
    assert cost.max_rss < RSS_BOUND
