"""Names from an audited system (file names, /etc/hostname, PRETTY_NAME, and everything a VM's report
says in fleet-report) can neither drive the operator's terminal (`ESC ] 0;... BEL` sets its title,
`ESC [2J` clears it) nor forge lines (a newline or CR followed by `OK ...`), nor forge Nagios perfdata
(`|`) or Prometheus samples: every line-based output shows control characters escaped."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fixtures.corrupt import flip_byte
from fsaudit.model import CheckResult, Finding, Report, Status
from tests.conftest import fsaudit

TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
FORGED = "\nOK: no damage found on every host\n"
HOSTILE = f"{TITLE}{CLEAR}\r{FORGED}"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # newline (0x0a) aside: it ends our own lines


def assert_inert(text: str, lines: int | None = None) -> None:
    assert not RAW_CONTROL.search(text), repr(RAW_CONTROL.search(text))
    assert not any(line.startswith("OK: no damage found on every host") for line in text.splitlines())
    assert "\\x1b]0;pwned\\x07" in text  # shown, escaped, so the operator sees what was there


def hostile_image(root: Path) -> Path:
    """An image whose hostname and OS name carry escapes, with a damaged gzip under a hostile name."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text(f"vm42{TITLE}{CLEAR}\n")
    (root / "etc" / "os-release").write_text(f'PRETTY_NAME="Debian{TITLE}{CLEAR}"\n')
    data = root / "srv" / "data"
    data.mkdir(parents=True)
    damaged = data / f"x{HOSTILE}.gz"
    damaged.write_bytes(gzip.compress(b"customer data\n" * 1000))
    flip_byte(damaged, -6)  # the stored CRC-32
    return root


def test_an_audit_shows_hostile_names_escaped_in_text_nagios_and_prometheus(tmp_path):
    root = hostile_image(tmp_path / "image")
    common = ("audit", "--root", root, "--check", "content", "--set", "content.paths=/srv")
    text = fsaudit(*common)
    assert text.code == 2, text.stderr
    assert_inert(text.stdout)
    assert "vm42\\x1b]0;pwned\\x07\\x1b[2J" in text.stdout.splitlines()[0]

    nagios = fsaudit(*common, "--format", "nagios")
    assert nagios.code == 2
    assert not RAW_CONTROL.search(nagios.stdout)
    first = nagios.stdout.splitlines()[0]
    assert first.count("|") == 1 and first.startswith("FSAUDIT CRITICAL - vm42\\x1b]0;pwned\\x07")

    report = fsaudit(*common, "--format", "json").report
    finding = report["checks"][0]["findings"][0]
    assert finding["path"] == f"/srv/data/x{HOSTILE}.gz"  # the JSON keeps the exact name


def hostile_report() -> Report:
    """A report as a hostile VM would send it: every free-text field forges lines and perfdata."""
    name = f"debian{HOSTILE}|forged=1;;;0"
    finding = Finding(
        name, "content-differs", "critical", f"differs{HOSTILE}", path=f"/usr/bin/{HOSTILE}",
        subject=f"sed{HOSTILE}", advice=f"reinstall{HOSTILE}",
    )  # fmt: skip
    checks = [
        CheckResult(name, Status.CRITICAL, reason=f"why{HOSTILE}", findings=[finding],
                    stats={f"files{HOSTILE}": 3, "note": HOSTILE}),
        CheckResult(f'x"}} 1\nfsaudit_status{HOSTILE}', Status.SKIPPED, reason=f"skipped{HOSTILE}"),
    ]  # fmt: skip
    return Report(
        host={"hostname": f"vm{HOSTILE}| x=1", "os": f"Debian{HOSTILE}"}, root=f"/mnt/{HOSTILE}",
        started="2026-06-08T10:00:00+00:00", finished="2026-06-08T11:00:00+00:00", checks=checks,
    )  # fmt: skip


def test_a_hostile_report_renders_inert_in_every_line_based_format(tmp_path):
    path = tmp_path / "vm.json"
    path.write_text(hostile_report().to_json())
    text = fsaudit("report", path)
    assert text.code == 2 and text.stdout
    assert_inert(text.stdout)

    nagios = fsaudit("report", path, "--format", "nagios").stdout
    assert not RAW_CONTROL.search(nagios)
    first, *rest = nagios.splitlines()
    assert first.count("|") == 1 and all("|" not in line for line in rest)
    assert "forged=1" not in first.split("|")[1]

    prometheus = fsaudit("report", path, "--format", "prometheus").stdout
    assert not RAW_CONTROL.search(prometheus)
    families = {family.name: family for family in text_string_to_metric_families(prometheus)}
    statuses = [sample for sample in families["fsaudit_status"].samples]
    assert len(statuses) == 1 and statuses[0].value == 2  # no forged sample
    checks = {sample.labels["check"] for sample in families["fsaudit_check_status"].samples}
    assert len(checks) == 2


def test_fleet_report_shows_what_vms_sent_escaped(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "hosts").mkdir()
    (tmp_path / "reports" / "vm1.json").write_text(hostile_report().to_json())
    (tmp_path / "reports" / "vm2.json").write_text(hostile_report().to_json())
    record = {"name": f"vm3{TITLE}", "address": "vm3", "outcome": "audit-failed", "status": "unknown",
              "message": f"fsaudit failed{HOSTILE}"}  # fmt: skip
    (tmp_path / "hosts" / "vm3.json").write_text(json.dumps(record))
    run = fsaudit("fleet-report", tmp_path)
    assert run.code == 2, run.stderr
    assert_inert(run.stdout)
    assert "sed\\x1b]0;pwned\\x07" in run.stdout  # the shared subject, escaped
