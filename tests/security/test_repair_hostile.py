"""`fsaudit repair` against hostile reports and hostile images (issue 13, items 1, 4 and 8).

A report may come from a VM whose tenant is root there, and an image's files are the tenant's: each
test builds its attack from code and asserts that it had no effect (no marker file, the host's
victim unchanged, memory bounded) and that repair said why it did not do what was asked.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from fixtures.corrupt import flip_byte
from fixtures.debian import bomb_deb
from fixtures.debroot import CACHE, RunningSystem, audit_json, make_deb, make_root
from fixtures.measured import MIB, run_measured
from tests.conftest import fsaudit, require_program

ALPHA = {"/usr/bin/alpha": b"#!/bin/sh\necho alpha\n" * 200}
BETA = {"/usr/lib/beta/libbeta.so.1": bytes(range(256)) * 64}
# The exact payloads of the issue, as a hostile VM would put them into its report.
PAYLOADS = [
    "--eval=%(id > /tmp/PWNED)",
    "--admindir=/tmp/PWNED-admindir",
    "-o APT::Update::Pre-Invoke::=touch /tmp/PWNED-apt",
    "-oAPT::Update::Pre-Invoke::=touch /tmp/PWNED-apt",
]
MARKERS = [Path("/tmp/PWNED"), Path("/tmp/PWNED-admindir"), Path("/tmp/PWNED-apt")]


@pytest.fixture(autouse=True)
def _programs():
    require_program("dpkg-deb", "dpkg")


@pytest.fixture
def image(tmp_path) -> Path:
    debs = [
        make_deb(tmp_path / "debs", "alpha", "1.0-1", ALPHA),
        make_deb(tmp_path / "debs", "beta", "1", BETA),
    ]
    return make_root(tmp_path / "root", debs)


def _markers_absent(*extra: Path) -> None:
    for marker in [*MARKERS, *extra]:
        assert not marker.exists(), f"{marker} exists: something ran a command from the report"


def _poisoned(report: Path, marker: Path) -> None:
    """Every name a finding gives becomes a payload; one more finding names no real path."""
    data = json.loads(report.read_text())
    findings = data["checks"][0]["findings"]
    payloads = [*PAYLOADS, f"--eval=%(touch {marker})"]
    for number, finding in enumerate(findings):
        payload = payloads[number % len(payloads)]
        finding["details"].update(package=payload, version=payload, architecture=payload)
        finding["subject"] = payload
    for payload in payloads:
        findings.append(
            {
                "check": "debian",
                "code": "content-differs",
                "severity": "critical",
                "path": payload,
                "message": "differs",
                "details": {"package": payload, "version": payload, "architecture": payload},
            }
        )
    data["checks"].append(
        {"name": "rpm", "status": "critical", "findings": [dict(f, check="rpm") for f in findings]}
    )
    report.write_text(json.dumps(data))


def test_options_in_a_report_never_reach_a_command_in_plan_or_apply_mode_on_an_image(image, tmp_path):
    flip_byte(image / "usr/bin/alpha", 10)
    report = tmp_path / "report.json"
    audit_json(image, report)
    marker = tmp_path / "PWNED-eval"
    _poisoned(report, marker)
    planned = fsaudit("repair", report, "--root", image)
    assert planned.code == 0, planned.stdout + planned.stderr
    _markers_absent(marker)
    # The damaged file is repaired for what the image's database says it is, whatever the report says.
    assert "- alpha 1.0-1 (all)" in planned.stdout
    assert "the report gives no usable path for it" in planned.stdout
    applied = fsaudit("repair", report, "--root", image, "--apply", "--yes")
    assert applied.code == 0, applied.stdout + applied.stderr
    _markers_absent(marker)
    assert (image / "usr/bin/alpha").read_bytes() == ALPHA["/usr/bin/alpha"]


def test_options_in_a_report_never_reach_apt_or_dpkg_on_the_running_system(tmp_path):
    require_program("unshare", "util-linux")
    require_program("dpkg-scanpackages", "dpkg-dev")
    system = RunningSystem(tmp_path / "system")
    system.install([make_deb(tmp_path / "debs", "alpha", "1.0-1", ALPHA)])
    flip_byte(system.path("/usr/bin/alpha"), 10)
    audited = system.run(
        f"{sys.executable} -m fsaudit audit --check debian --format json --output /tmp/report.json"
    )
    assert audited.returncode == 2, audited.stdout + audited.stderr
    report = system.path("/tmp/report.json")
    marker = Path("/tmp/PWNED-eval-live")
    _poisoned(report, marker)
    planned = system.run(f"{sys.executable} -m fsaudit repair /tmp/report.json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    applied = system.run(f"{sys.executable} -m fsaudit repair /tmp/report.json --apply --yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "-- alpha=1.0-1" in applied.stdout
    for inside in [*MARKERS, marker]:
        assert not system.path(str(inside)).exists()
    _markers_absent(marker)
    assert system.path("/usr/bin/alpha").read_bytes() == ALPHA["/usr/bin/alpha"]


def test_a_report_from_another_machine_is_refused(tmp_path):
    data = json.loads((Path(__file__).parent.parent / "golden" / "report.json").read_text())
    data["host"] = {"hostname": "other-vm\x1b]0;owned\x07", "os": "x", "machine_id": "0" * 32}
    report = tmp_path / "report.json"
    report.write_text(json.dumps(data))
    for args in ((), ("--apply", "--yes")):
        run = fsaudit("repair", report, *args)
        assert run.code == 3
        assert (
            "the report is about other-vm\\x1b]0;owned\\x07 (machine-id 00000000000000000000000000000000)"
            in (run.stderr)
        )
        assert "\x1b" not in run.stderr + run.stdout
        assert "Repair plan" not in run.stdout
    # Made by an older fsaudit, the report cannot say which machine it is about: refused too.
    del data["host"]["machine_id"]
    report.write_text(json.dumps(data))
    run = fsaudit("repair", report)
    assert run.code == 3 and "does not say which machine it was made on" in run.stderr


def test_nothing_from_the_image_runs_and_its_symlinks_cannot_redirect_writes(tmp_path):
    victim = tmp_path / "host-victim"
    victim.mkdir()
    (victim / "keep").write_text("the host's file\n")
    marker = tmp_path / "ran-from-image"
    scripts = {name: f"#!/bin/sh\ntouch {marker}\n" for name in ("preinst", "postinst", "prerm", "postrm")}
    debs = [
        make_deb(tmp_path / "debs", "alpha", "1.0-1", ALPHA),
        make_deb(tmp_path / "debs", "beta", "1", BETA),
        make_deb(tmp_path / "debs", "gamma", "1", {"/usr/share/gamma/data": b"gamma\n" * 100}),
    ]
    image = make_root(tmp_path / "root", debs)
    # The cached package files now carry maintainer scripts that would run as root on the host.
    for deb in debs:
        name, version = deb.name.split("_")[:2]
        files = {"alpha": ALPHA, "beta": BETA, "gamma": {"/usr/share/gamma/data": b"gamma\n" * 100}}[name]
        hostile = make_deb(tmp_path / "hostile", name, version, files, scripts=scripts)
        (image / CACHE / deb.name).write_bytes(hostile.read_bytes())
    # A parent directory that is a symlink to the host's victim (absolute), one that climbs out
    # (relative), and a symlink where the damaged file is, pointing at the host's file.
    (image / "usr/lib/beta/libbeta.so.1").unlink()
    os.rmdir(image / "usr/lib/beta")
    os.symlink(str(victim), image / "usr/lib/beta")
    (image / "usr/share/gamma/data").unlink()
    os.rmdir(image / "usr/share/gamma")
    os.symlink("../../../../../../../../.." + str(victim), image / "usr/share/gamma")
    (image / "usr/bin/alpha").unlink()
    os.symlink(str(victim / "keep"), image / "usr/bin/alpha")
    report = tmp_path / "report.json"
    audit_json(image, report)
    run = fsaudit("repair", report, "--root", image, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert not marker.exists() and not (image / str(marker).lstrip("/")).exists()
    assert sorted(os.listdir(victim)) == ["keep"]
    assert (victim / "keep").read_text() == "the host's file\n"
    # Each link was followed inside the image, as the image's own system would follow it.
    inside = image / str(victim).lstrip("/")
    assert (inside / "libbeta.so.1").read_bytes() == BETA["/usr/lib/beta/libbeta.so.1"]
    assert (inside / "data").read_bytes() == b"gamma\n" * 100
    assert not (image / "usr/bin/alpha").is_symlink()
    assert (image / "usr/bin/alpha").read_bytes() == ALPHA["/usr/bin/alpha"]


def _bounded_run(command):
    """(exit status, stdout, peak RSS in MiB) of `command`."""
    done, cost = run_measured(command)
    return done.returncode, done.stdout, cost.max_rss / MIB


def test_a_bomb_in_the_apt_cache_costs_neither_memory_nor_the_verdict(image, tmp_path):
    # A 2^62-byte pax header followed by 256 MiB of zeros, about 40 KB on disk.
    bomb_deb(image / CACHE / "alpha_1.0-1_all.deb", claimed=2**62, zeros=256 << 20)
    flip_byte(image / "usr/bin/alpha", 10)
    report = tmp_path / "report.json"
    audit = [sys.executable, "-m", "fsaudit", "audit", "--root", str(image), "--check", "debian"]
    code, _, audit_mb = _bounded_run([*audit, "--format", "json", "--output", str(report)])
    assert code == 2
    (finding,) = json.loads(report.read_text())["checks"][0]["findings"]
    assert finding["code"] == "content-differs"
    repair = [
        sys.executable,
        "-m",
        "fsaudit",
        "repair",
        str(report),
        "--root",
        str(image),
        "--apply",
        "--yes",
    ]
    code, out, repair_mb = _bounded_run(repair)
    assert code == 3
    assert "FAILED: alpha 1.0-1 (all): cannot read the package file" in out
    assert "extended header claims" in out
    # Read naively, the zeros behind the header alone would take 256 MiB.
    assert audit_mb < 200 and repair_mb < 200, (audit_mb, repair_mb)


def test_a_cached_rpm_that_is_not_the_installed_one_is_never_used(tmp_path):
    from fixtures import rpmroot

    require_program("rpmbuild", "rpm")
    files = {"/usr/bin/tool": b"#!/bin/sh\necho tool\n" * 100}
    real = rpmroot.build_rpm(tmp_path / "build", "tool", "2.1", files)
    root = rpmroot.make_root(tmp_path / "root", [real])
    # Same name, version and release, other content: what a tenant could leave in the cache.
    impostor = rpmroot.build_rpm(
        tmp_path / "impostor", "tool", "2.1", {"/usr/bin/tool": b"#!/bin/sh\nevil\n"}
    )
    (root / rpmroot.CACHE / real.name).write_bytes(impostor.read_bytes())
    flip_byte(root / "usr/bin/tool", 7)
    damaged = (root / "usr/bin/tool").read_bytes()
    report = tmp_path / "report.json"
    fsaudit("audit", "--root", root, "--check", "rpm", "--format", "json", "--output", report)
    run = fsaudit("repair", report, "--root", root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "no package file of tool 2.1-1 (noarch)" in run.stdout
    assert "nothing to restore" in run.stdout
    assert (root / "usr/bin/tool").read_bytes() == damaged
