"""`fsaudit repair`: plan, apply, re-verify and interrupt, on a real `dpkg --root` test root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.corrupt import flip_byte, truncate
from fixtures.debroot import CACHE, audit_json, make_deb, make_root, verify_lines
from fsaudit.model import Finding, Severity
from fsaudit.repair import Outcome, Step, live_command, outcome_exit_code, root_command
from fsaudit.reverify import parse_verify_output
from tests.conftest import assert_valid_report, fsaudit, require_program

ALPHA = {"/usr/bin/alpha": b"#!/bin/sh\necho alpha\n" * 200, "/usr/share/doc/alpha/README": b"alpha\n"}
BETA = {"/usr/lib/beta/libbeta.so.1": bytes(range(256)) * 64, "/etc/beta.conf": b"setting = 1\n"}
GAMMA = {"/usr/share/gamma/data with space.txt": b"gamma data\n" * 100}
DELTA = {"/usr/share/delta/untouched.txt": b"delta is never damaged\n"}


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    require_program("dpkg-deb", "dpkg")
    work = tmp_path_factory.mktemp("debs")
    return [
        make_deb(work, "alpha", "1.0-1", ALPHA),
        make_deb(work, "beta", "2:3.1-4", BETA, conffiles=["/etc/beta.conf"]),
        make_deb(work, "gamma", "0.9", GAMMA),
        make_deb(work, "delta", "5", DELTA),
    ]


@pytest.fixture
def root(tmp_path, debs) -> Path:
    return make_root(tmp_path / "root", debs)


def damage(root: Path) -> None:
    """Lost writes in three packages and an edited conffile; delta stays intact."""
    flip_byte(root / "usr/bin/alpha", 100)
    (root / "usr/lib/beta/libbeta.so.1").unlink()
    (root / "etc/beta.conf").write_text("setting = 2 # edited by the admin\n")
    truncate(root / "usr/share/gamma/data with space.txt", 5)


def snapshot(root: Path) -> dict:
    """Every file's content, inode and mtime under the root (dpkg's own database aside)."""
    state = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if "var/lib/dpkg" in str(path) or "var/log" in str(path):
                continue
            st = path.lstat()
            state[str(path.relative_to(root))] = (path.read_bytes(), st.st_ino, st.st_mtime_ns)
    return state


def report_of(root: Path, tmp_path: Path) -> Path:
    output = tmp_path / "report.json"
    data = audit_json(root, output)
    assert_valid_report(data)
    return output


def test_the_plan_lists_each_package_and_changes_nothing(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = snapshot(root)
    run = fsaudit("repair", report)
    assert run.code == 0, run.stdout + run.stderr
    out = run.stdout
    assert "reinstall 3 package(s) at the installed version" in out
    for label in ("alpha 1.0-1 (all)", "beta 2:3.1-4 (all)", "gamma 0.9 (all)"):
        assert label in out
    assert (
        f"dpkg --root {root} --force-confdef --force-confold -i {root / CACHE / 'alpha_1.0-1_all.deb'}" in out
    )
    assert "/usr/share/gamma/data with space.txt" in out
    assert "Left alone (1)" in out and "/etc/beta.conf" in out
    assert "delta" not in out
    assert "Nothing was changed. Run again with --apply to reinstall." in out
    assert snapshot(root) == before


def test_apply_repairs_reverifies_and_touches_nothing_else(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = snapshot(root)
    run = fsaudit("repair", report, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Reinstalled: alpha 1.0-1 (all), beta 2:3.1-4 (all), gamma 0.9 (all)" in run.stdout
    assert "the reinstalled packages are intact" in run.stdout
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]
    after = snapshot(root)
    # Not listed, so not touched: the intact package and the edited conffile, to the inode.
    assert after["usr/share/delta/untouched.txt"] == before["usr/share/delta/untouched.txt"]
    assert after["etc/beta.conf"] == before["etc/beta.conf"]
    assert (root / "usr/bin/alpha").read_bytes() == ALPHA["/usr/bin/alpha"]
    # An audit after the repair finds no damage left.
    data = audit_json(root, tmp_path / "after.json")
    assert [f for c in data["checks"] for f in c["findings"] if f["severity"] == "critical"] == []


def test_the_confirmation_must_be_typed(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = snapshot(root)
    declined = subprocess.run(
        [sys.executable, "-m", "fsaudit", "repair", str(report), "--apply"],
        input="y\n",
        capture_output=True,
        text=True,
    )
    assert declined.returncode == 3
    assert "Type yes to reinstall 3 package(s)" in declined.stdout
    assert "Nothing was changed." in declined.stdout
    assert snapshot(root) == before
    accepted = subprocess.run(
        [sys.executable, "-m", "fsaudit", "repair", str(report), "--apply"],
        input="yes\n",
        capture_output=True,
        text=True,
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]


def test_conffiles_are_replaced_only_when_allowed(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    run = fsaudit("repair", report, "--apply", "--yes", "--allow-conffiles")
    assert run.code == 0, run.stdout + run.stderr
    assert "--force-confask --force-confnew --force-confmiss" in run.stdout
    assert verify_lines(root) == []
    assert (root / "etc/beta.conf").read_bytes() == BETA["/etc/beta.conf"]
    assert "edited by the admin" in (root / "etc/beta.conf.dpkg-old").read_text()


def test_what_cannot_be_repaired_goes_to_the_owners_list(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    data = json.loads(report.read_text())
    findings = data["checks"][0]["findings"]
    for finding in findings:
        if finding["details"].get("package") == "alpha":
            finding["details"]["version"] = "0.5-1"
            finding["subject"] = "alpha 0.5-1"
    data["checks"].append(
        {
            "name": "window",
            "status": "warning",
            "findings": [
                {
                    "check": "window",
                    "code": "changed-unverified",
                    "severity": "warning",
                    "path": "/srv/app/upload.bin",
                    "message": "modified during the incident window",
                    "advice": "compare /srv/app/upload.bin with your backup",
                }
            ],
        }
    )
    report.write_text(json.dumps(data))
    (root / CACHE / "gamma_0.9_all.deb").unlink()
    before = snapshot(root)
    run = fsaudit("repair", report, "--apply", "--yes")
    out = run.stdout
    assert "Cannot repair automatically (3)" in out
    assert "alpha 1.0-1 is installed, the report was about 0.5-1: audit again" in out
    assert "no package file of gamma 0.9 (all)" in out
    assert (
        "/srv/app/upload.bin: modified during the incident window [window changed-unverified]: compare" in out
    )
    assert "Reinstalled: beta 2:3.1-4 (all)" in out
    assert run.code == 0, out + run.stderr
    after = snapshot(root)
    for untouched in (
        "usr/bin/alpha",
        "usr/share/gamma/data with space.txt",
        "usr/share/delta/untouched.txt",
    ):
        assert after[untouched] == before[untouched]


def test_a_damaged_package_file_fails_its_step_and_leaves_the_root_no_worse(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    cached = root / CACHE / "alpha_1.0-1_all.deb"
    flip_byte(cached, -200)
    before = verify_lines(root)
    run = fsaudit("repair", report, "--apply", "--yes")
    assert run.code == 3, run.stdout + run.stderr
    assert "FAILED: alpha 1.0-1 (all): dpkg exited with" in run.stdout
    assert "Reinstalled: beta 2:3.1-4 (all), gamma 0.9 (all)" in run.stdout
    after = verify_lines(root)
    assert set(after) <= set(before)
    assert "??5??????   /usr/bin/alpha" in after


def test_an_interrupted_repair_finishes_the_package_at_hand_and_says_what_is_left(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = set(verify_lines(root))
    process = subprocess.Popen(
        [sys.executable, "-m", "fsaudit", "repair", str(report), "--apply", "--yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("reinstalling beta"):
                # What a Ctrl-C in the terminal does: SIGINT to the whole foreground process group.
                os.killpg(process.pid, signal.SIGINT)
                break
        rest, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(lines) + rest
    assert process.returncode == 3, out + errors
    assert "Interrupted: the package being reinstalled was finished, the rest was not started." in out
    left = next(line for line in out.splitlines() if line.startswith("Not done (left): "))
    assert left.endswith("gamma 0.9 (all)")
    # beta is done, or (when the interrupt caught its dpkg as it was being started) left untouched.
    assert "Reinstalled: alpha 1.0-1 (all)" in out
    assert "FAILED" not in out
    assert "the reinstalled packages are intact" in out
    after = set(verify_lines(root))
    assert after <= before
    assert "??5??????   /usr/bin/alpha" not in after
    assert "??5??????   /usr/share/gamma/data with space.txt" in after
    # Running the plan again finishes the job.
    assert fsaudit("repair", report, "--apply", "--yes").code == 0
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]


def test_the_real_report_renders_in_every_format(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    for fmt in ("text", "html", "nagios", "prometheus"):
        run = fsaudit("report", report, "--format", fmt)
        assert run.code == 2, run.stderr
    html = fsaudit("report", report, "--format", "html").stdout
    assert "3 system files were damaged; reinstalling 3 packages (alpha, beta, gamma) restores them." in html
    assert fsaudit("report", report, "--format", "nagios").stdout.startswith("FSAUDIT CRITICAL - vm42")


def test_apply_without_anything_to_do_changes_nothing(root, tmp_path):
    report = report_of(root, tmp_path)
    run = fsaudit("repair", report, "--apply", "--yes")
    assert run.code == 0
    assert "nothing to reinstall" in run.stdout
    assert "Nothing was changed." in run.stdout


def test_a_missing_root_is_a_clear_error(tmp_path):
    report = tmp_path / "r.json"
    data = json.loads((Path(__file__).parent / "golden" / "report.json").read_text())
    data["root"] = str(tmp_path / "gone")
    report.write_text(json.dumps(data))
    run = fsaudit("repair", report)
    assert run.code == 3
    assert "is not a directory: mount the system and give --root" in run.stderr


def _step(manager: str, conffiles: bool = False) -> Step:
    return Step(
        "debian" if manager == "dpkg" else "rpm", manager, "sed", "4.9-1", "amd64", conffiles=conffiles
    )


def test_live_and_root_commands():
    assert live_command(_step("dpkg")) == [
        "apt-get", "install", "--reinstall", "--no-remove", "-y",
        "-o=Dpkg::Options::=--force-confdef", "-o=Dpkg::Options::=--force-confold", "sed:amd64=4.9-1",
    ]  # fmt: skip
    assert "-o=Dpkg::Options::=--force-confmiss" in live_command(_step("dpkg", conffiles=True))
    assert live_command(_step("rpm")) == ["dnf", "reinstall", "-y", "sed-4.9-1.amd64"]
    rpm = _step("rpm")
    rpm.archive = "/mnt/vm/var/cache/dnf/base/packages/sed-4.9-1.amd64.rpm"
    assert root_command(rpm, "/mnt/vm") == ["rpm", "--root", "/mnt/vm", "-U", "--replacepkgs", rpm.archive]


def test_verify_output_parsing_keeps_spaces_and_conffiles():
    text = "??5?????? c /etc/x.conf\nmissing     /usr/bin/y z\nS.5....T.    /usr/lib/w\n..?......   /usr/k\n"
    found = {(f.code, f.path, f.severity) for f in parse_verify_output(text, _step("dpkg"))}
    assert found == {
        ("conffile-changed", "/etc/x.conf", Severity.WARNING),
        ("missing", "/usr/bin/y z", Severity.CRITICAL),
        ("content-differs", "/usr/lib/w", Severity.CRITICAL),
    }


def test_exit_code_of_an_outcome():
    finding = Finding("debian", "missing", Severity.CRITICAL, "gone", path="/x")
    assert outcome_exit_code(Outcome(done=[_step("dpkg")])) == 0
    assert outcome_exit_code(Outcome(done=[_step("dpkg")], still_wrong=[finding])) == 2
    assert outcome_exit_code(Outcome(interrupted=True, left=[_step("dpkg")])) == 3
    assert outcome_exit_code(Outcome(verify_problem="the debian check did not finish")) == 3


def test_only_file_damage_is_planned(root, tmp_path):
    from fsaudit.model import CheckResult, Report, Status
    from fsaudit.repair import build_plan

    details = {"package": "alpha", "version": "1.0-1", "architecture": "all"}
    other = {"package": "beta", "version": "", "architecture": "all"}
    config = {"package": "x", "version": "1-1", "architecture": "noarch"}
    restore = "restore /var/lib/dpkg/status from /var/backups"
    findings = [
        Finding(
            "debian", "content-differs", Severity.CRITICAL, "differs", path="/usr/bin/alpha", details=details
        ),
        Finding("debian", "database-damaged", Severity.CRITICAL, "list", details=details, advice=restore),
        Finding("debian", "package-unsettled", Severity.WARNING, "half-configured", details=details),
        Finding("debian", "database-damaged", Severity.CRITICAL, "orphan list", details=other),
        Finding("rpm", "config-differs", Severity.WARNING, "edited", path="/etc/x", details=config),
    ]
    report = Report(
        {"hostname": "vm42"}, str(root), "", "", [CheckResult("debian", Status.CRITICAL, findings=findings)]
    )
    plan = build_plan(report, str(root))
    assert [(s.package, [f.code for f in s.findings]) for s in plan.steps] == [("alpha", ["content-differs"])]
    assert [f.code for f in plan.left_alone] == ["config-differs"]
    assert [f.code for f, _ in plan.cannot] == ["database-damaged", "package-unsettled", "database-damaged"]
    assert plan.cannot[0][1] == restore


def test_an_apt_step_that_would_change_other_packages_is_refused():
    from fsaudit.repair import apt_side_effects

    simulation = (
        "Reading package lists...\n"
        "Inst sed [4.9-1] (4.9-1 Debian:12.5/stable [amd64])\n"
        "Inst libc6 [2.36-9] (2.36-9+deb12u4 Debian:12.5/stable [amd64])\n"
        "Remv oldthing [1.0]\n"
        "Conf sed (4.9-1 Debian:12.5/stable [amd64])\n"
    )
    assert apt_side_effects(simulation, _step("dpkg")) == ["Inst libc6", "Remv oldthing"]
    clean = "Inst sed:amd64 [4.9-1] (4.9-1 Debian:12.5/stable [amd64])\nConf sed:amd64 (4.9-1)\n"
    assert apt_side_effects(clean, _step("dpkg")) == []


def test_rpm_repair_on_an_rpm_root_from_the_dnf_cache(tmp_path):
    from fixtures import rpmroot

    require_program("rpmbuild", "rpm")
    files = {"/usr/bin/tool": b"#!/bin/sh\necho tool\n" * 100, "/usr/share/tool/data": b"data\n" * 300}
    rpm = rpmroot.build_rpm(tmp_path / "build", "tool", "2.1", files)
    root = rpmroot.make_root(tmp_path / "root", [rpm])
    flip_byte(root / "usr/bin/tool", 7)
    (root / "usr/share/tool/data").unlink()
    report = tmp_path / "report.json"
    audited = fsaudit("audit", "--root", root, "--check", "rpm", "--format", "json", "--output", report)
    assert audited.code == 2, audited.stderr
    assert_valid_report(json.loads(report.read_text()))
    planned = fsaudit("repair", report)
    assert (
        f"rpm --root {root} --dbpath /var/lib/rpm -U --replacepkgs {root / rpmroot.CACHE}" in planned.stdout
    )
    assert "tool 2.1-1 (noarch)" in planned.stdout and "/usr/share/tool/data" in planned.stdout
    run = fsaudit("repair", report, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Re-verified with the rpm check: the reinstalled packages are intact." in run.stdout
    assert rpmroot.verify_lines(root, "tool") == []
    assert (root / "usr/share/tool/data").read_bytes() == files["/usr/share/tool/data"]
