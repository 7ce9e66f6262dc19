"""`fsaudit repair` of a mounted image: plan, restore, check again and interrupt, on real roots made
with `dpkg --root` and `rpm --root`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fixtures.corrupt import flip_byte, lose, truncate
from fixtures.debroot import CACHE, audit_json, make_deb, make_root, verify_lines
from fsaudit.model import CheckResult, Finding, Report, Severity, Status
from fsaudit.repair import Outcome, Request, Step, build_plan, outcome_exit_code
from tests.conftest import assert_valid_report, fsaudit, require_program

ALPHA = {"/usr/bin/alpha": b"#!/bin/sh\necho alpha\n" * 200, "/usr/share/doc/alpha/README": b"alpha\n"}
BETA = {"/usr/lib/beta/libbeta.so.1": bytes(range(256)) * 64, "/etc/beta.conf": b"setting = 1\n"}
GAMMA = {"/usr/share/gamma/data with space.txt": b"gamma data\n" * 100}
DELTA = {"/usr/share/delta/untouched.txt": b"delta is never damaged\n"}
# Big enough that restoring it takes a while: an interrupt lands while it is under way.
BIG = {"/usr/lib/beta/libbeta.so.1": os.urandom(48 << 20), "/etc/beta.conf": b"setting = 1\n"}


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
    lose(root / "usr/lib/beta/libbeta.so.1")
    (root / "etc/beta.conf").write_text("setting = 2 # edited by the admin\n")
    truncate(root / "usr/share/gamma/data with space.txt", 5)


def snapshot(root: Path) -> dict:
    """Every file's content, inode, mode and mtime under the root (dpkg's own database aside)."""
    state = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if "var/lib/dpkg" in str(path) or "var/log" in str(path):
                continue
            st = path.lstat()
            state[str(path.relative_to(root))] = (path.read_bytes(), st.st_ino, st.st_mode, st.st_mtime_ns)
    return state


def report_of(root: Path, tmp_path: Path) -> Path:
    output = tmp_path / "report.json"
    data = audit_json(root, output)
    assert_valid_report(data)
    return output


def repair(report: Path, root: Path, *args: str, **kwargs):
    return fsaudit("repair", report, "--root", root, *args, **kwargs)


def test_the_plan_lists_each_package_and_changes_nothing(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = snapshot(root)
    run = repair(report, root)
    assert run.code == 0, run.stdout + run.stderr
    out = run.stdout
    assert f"Repair plan for the image at {root}:" in out
    assert "debian: restore 3 package(s), answering 3 finding(s):" in out
    assert f"- alpha 1.0-1 (all) from {root / CACHE / 'alpha_1.0-1_all.deb'}: 1 file(s)" in out
    assert f"- beta 2:3.1-4 (all) from {root / CACHE / 'beta_2%3a3.1-4_all.deb'}: 1 file(s)" in out
    assert "/usr/share/gamma/data with space.txt" in out
    assert "nothing from the image is run" in out
    assert "Left alone (1)" in out and "/etc/beta.conf" in out and "--allow-conffiles" in out
    assert "delta" not in out
    assert "Nothing was changed. Run again with --apply to restore." in out
    assert snapshot(root) == before


def test_apply_restores_checks_again_and_touches_nothing_else(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = snapshot(root)
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Restored: alpha 1.0-1 (all), beta 2:3.1-4 (all), gamma 0.9 (all)" in run.stdout
    assert "Checked again with the debian check: everything restored is intact." in run.stdout
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]
    after = snapshot(root)
    # Not damaged, so not touched: the intact package, the edited conffile, alpha's README, to the inode.
    for untouched in ("usr/share/delta/untouched.txt", "etc/beta.conf", "usr/share/doc/alpha/README"):
        assert after[untouched] == before[untouched]
    # Restored with the packaged owner, mode and mtime (dpkg's, from the archive).
    assert (root / "usr/bin/alpha").read_bytes() == ALPHA["/usr/bin/alpha"]
    packaged = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(root / CACHE / "beta_2%3a3.1-4_all.deb")], capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(packaged)) as tar:
        member = tar.getmember("./usr/lib/beta/libbeta.so.1")
    st = (root / "usr/lib/beta/libbeta.so.1").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime)) == (member.mode, 0, 0, member.mtime)
    # No temporary file left beside what was restored.
    assert sorted(os.listdir(root / "usr/bin")) == ["alpha"]
    data = audit_json(root, tmp_path / "after.json")
    assert [f for c in data["checks"] for f in c["findings"] if f["severity"] == "critical"] == []


def test_the_confirmation_must_be_typed(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    before = snapshot(root)
    command = [sys.executable, "-m", "fsaudit", "repair", str(report), "--root", str(root), "--apply"]
    declined = subprocess.run(command, input="y\n", capture_output=True, text=True)
    assert declined.returncode == 3
    assert f"Type yes to restore 3 package(s) on {root}" in declined.stdout
    assert "Nothing was changed." in declined.stdout
    assert snapshot(root) == before
    accepted = subprocess.run(command, input="yes\n", capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]


def test_conffiles_are_replaced_only_when_allowed(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    run = repair(report, root, "--apply", "--yes", "--allow-conffiles")
    assert run.code == 0, run.stdout + run.stderr
    assert verify_lines(root) == []
    assert (root / "etc/beta.conf").read_bytes() == BETA["/etc/beta.conf"]
    assert "edited by the admin" in (root / "etc/beta.conf.dpkg-old").read_text()


def test_a_local_change_is_restored_only_when_asked(root, tmp_path):
    changed = root / "usr/share/doc/alpha/README"
    changed.write_text("alpha, as the local admin rewrote it\n")
    later = os.stat(root / "var/lib/dpkg/info/alpha.list").st_mtime + 3600
    os.utime(changed, (later, later))
    flip_byte(root / "usr/share/gamma/data with space.txt", 1)
    report = report_of(root, tmp_path)
    assert {f["code"] for f in json.loads(report.read_text())["checks"][0]["findings"]} == {
        "modified-after-install",
        "content-differs",
    }
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Left alone (1)" in run.stdout and "--include-modified restores the packaged version" in run.stdout
    assert "Restored: gamma 0.9 (all)" in run.stdout
    assert "as the local admin rewrote it" in changed.read_text()
    run = repair(report, root, "--apply", "--yes", "--include-modified")
    assert run.code == 0, run.stdout + run.stderr
    assert "Restored: alpha 1.0-1 (all)" in run.stdout
    assert changed.read_bytes() == ALPHA["/usr/share/doc/alpha/README"]


def test_a_file_removed_on_the_system_is_restored_only_when_asked(root, tmp_path):
    removed = root / "usr/share/doc/alpha/README"
    removed.unlink()
    later = os.stat(root / "var/lib/dpkg/info/alpha.list").st_mtime + 3600
    os.utime(removed.parent, (later, later))
    report = report_of(root, tmp_path)
    (finding,) = json.loads(report.read_text())["checks"][0]["findings"]
    assert finding["code"] == "modified-after-install" and finding["details"]["removed"] is True
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Left alone (1)" in run.stdout and "removed on the system" in run.stdout
    assert not removed.exists()
    run = repair(report, root, "--apply", "--yes", "--include-modified")
    assert run.code == 0, run.stdout + run.stderr
    assert "Restored: alpha 1.0-1 (all)" in run.stdout
    assert removed.read_bytes() == ALPHA["/usr/share/doc/alpha/README"]


def test_what_cannot_be_repaired_goes_to_the_owners_list(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    data = json.loads(report.read_text())
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
    run = repair(report, root, "--apply", "--yes")
    out = run.stdout
    assert "Cannot repair automatically (2)" in out
    assert "no package file of gamma 0.9 (all)" in out and "--archives DIR" in out
    assert (
        "/srv/app/upload.bin: modified during the incident window [window changed-unverified]: compare" in out
    )
    assert "Restored: alpha 1.0-1 (all), beta 2:3.1-4 (all)" in out
    assert run.code == 0, out + run.stderr
    after = snapshot(root)
    for untouched in ("usr/share/gamma/data with space.txt", "usr/share/delta/untouched.txt"):
        assert after[untouched] == before[untouched]


def test_package_files_from_archives_and_a_report_of_an_older_version(root, tmp_path, debs):
    damage(root)
    report = report_of(root, tmp_path)
    data = json.loads(report.read_text())
    for finding in data["checks"][0]["findings"]:
        if finding["details"].get("package") == "alpha":
            finding["details"]["version"] = "0.5-1"
    report.write_text(json.dumps(data))
    archives = tmp_path / "downloads"
    archives.mkdir()
    os.rename(root / CACHE / "gamma_0.9_all.deb", archives / "gamma_0.9_all.deb")
    run = repair(report, root, "--apply", "--yes", "--archives", archives)
    assert run.code == 0, run.stdout + run.stderr
    # The database, not the report, says which version is installed.
    assert "Restored: alpha 1.0-1 (all), beta 2:3.1-4 (all), gamma 0.9 (all)" in run.stdout
    assert f"from {archives / 'gamma_0.9_all.deb'}" in run.stdout
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]


def test_damage_repaired_since_the_audit_is_already_as_packaged(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    (root / "usr/bin/alpha").write_bytes(ALPHA["/usr/bin/alpha"])
    run = repair(report, root)
    assert run.code == 0
    assert "Already as packaged (1): nothing to do:" in run.stdout
    assert "- alpha" not in run.stdout


def test_a_damaged_package_file_fails_its_step_and_leaves_the_root_no_worse(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    cached = root / CACHE / "alpha_1.0-1_all.deb"
    flip_byte(cached, -200)
    before = verify_lines(root)
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 3, run.stdout + run.stderr
    assert "FAILED: alpha 1.0-1 (all):" in run.stdout
    assert "Restored: beta 2:3.1-4 (all), gamma 0.9 (all)" in run.stdout
    assert "everything restored is intact" not in run.stdout
    after = verify_lines(root)
    assert set(after) <= set(before)
    assert "??5??????   /usr/bin/alpha" in after


def test_a_package_file_of_other_content_is_never_written(root, tmp_path):
    flip_byte(root / "usr/bin/alpha", 100)
    report = report_of(root, tmp_path)
    impostor = make_deb(
        tmp_path / "impostor", "alpha", "1.0-1", {"/usr/bin/alpha": b"#!/bin/sh\necho evil\n"}
    )
    (root / CACHE / "alpha_1.0-1_all.deb").write_bytes(impostor.read_bytes())
    damaged = (root / "usr/bin/alpha").read_bytes()
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 3
    assert "does not have the MD5 the package database records: not written" in run.stdout
    assert (root / "usr/bin/alpha").read_bytes() == damaged
    assert sorted(os.listdir(root / "usr/bin")) == ["alpha"]


def test_an_interrupted_repair_finishes_the_package_at_hand_and_says_what_is_left(tmp_path, debs):
    big = make_deb(tmp_path / "big", "beta", "2:3.1-4", BIG, conffiles=["/etc/beta.conf"], compression="none")
    root = make_root(tmp_path / "root", [debs[0], big, debs[2]])
    damage(root)
    report = report_of(root, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "fsaudit", "repair", str(report), "--root", str(root), "--apply", "--yes"],
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
            if line.startswith("restoring beta"):
                # What a Ctrl-C in the terminal does: SIGINT to the whole foreground process group.
                os.killpg(process.pid, signal.SIGINT)
                break
        rest, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(lines) + rest
    assert process.returncode == 3, out + errors
    assert "Interrupted: what was under way was finished, the rest was not started." in out
    assert "Not done (left): gamma 0.9 (all)" in out
    assert "Restored: alpha 1.0-1 (all), beta 2:3.1-4 (all)" in out
    assert "FAILED" not in out
    after = verify_lines(root)
    assert "??5??????   /usr/bin/alpha" not in after
    assert "??5??????   /usr/share/gamma/data with space.txt" in after
    # Running the plan again finishes the job.
    assert repair(report, root, "--apply", "--yes").code == 0
    assert verify_lines(root) == ["??5?????? c /etc/beta.conf"]


def test_the_real_report_renders_in_every_format(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    for fmt in ("text", "html", "nagios", "prometheus"):
        run = fsaudit("report", report, "--format", fmt)
        assert run.code == 2, run.stderr
    html = fsaudit("report", report, "--format", "html").stdout
    assert "3 system files were damaged; reinstalling 3 packages (alpha, beta, gamma) inside the VM" in html
    assert f"fsaudit repair REPORT.json --root {root}" in html
    # Under --root, no advice gives a bare apt command that would act on this machine.
    text = fsaudit("report", report, "--format", "text").stdout
    told = [line for line in text.splitlines() if "apt-get install --reinstall" in line]
    assert told and all("inside the VM" in line for line in told)
    assert fsaudit("report", report, "--format", "nagios").stdout.startswith("FSAUDIT CRITICAL - vm42")


def test_apply_without_anything_to_do_changes_nothing(root, tmp_path):
    report = report_of(root, tmp_path)
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0
    assert "nothing to restore" in run.stdout
    assert "Nothing was changed." in run.stdout


def test_a_report_of_an_image_needs_root_to_name_it(root, tmp_path):
    damage(root)
    report = report_of(root, tmp_path)
    run = fsaudit("repair", report)
    assert run.code == 3
    assert f"the report was made of a mounted image ({root})" in run.stderr
    assert "give it with --root DIR" in run.stderr


def _step(check: str = "debian") -> Step:
    return Step(check, "sed 4.9-1 (amd64)")


def test_exit_code_of_an_outcome():
    finding = Finding("debian", "missing", Severity.CRITICAL, "gone", path="/x")
    assert outcome_exit_code(Outcome(done=[_step()])) == 0
    assert outcome_exit_code(Outcome(done=[_step()], still_wrong=[finding])) == 2
    assert outcome_exit_code(Outcome(interrupted=True, left=[_step()])) == 3
    assert outcome_exit_code(Outcome(done=[_step()], failed=[(_step(), "dpkg failed")])) == 3
    assert outcome_exit_code(Outcome(verify_problem="the debian check did not finish")) == 3


def test_only_file_damage_is_planned(root, tmp_path):
    flip_byte(root / "usr/bin/alpha", 100)
    details = {"package": "alpha", "version": "1.0-1", "architecture": "all"}
    other = {"package": "beta", "version": "", "architecture": "all"}
    restore = "restore /var/lib/dpkg/status from /var/backups"
    findings = [
        Finding(
            "debian", "content-differs", Severity.CRITICAL, "differs", path="/usr/bin/alpha", details=details
        ),
        Finding("debian", "database-damaged", Severity.CRITICAL, "list", details=details, advice=restore),
        Finding("debian", "package-unsettled", Severity.WARNING, "half-configured", details=details),
        Finding("debian", "database-damaged", Severity.CRITICAL, "orphan list", details=other),
        Finding(
            "debian",
            "unreadable",
            Severity.WARNING,
            "denied",
            path="/usr/share/gamma/data with space.txt",
            details={**details, "errno": "EACCES"},
        ),
        Finding("rpm", "config-differs", Severity.WARNING, "edited", path="/etc/x", details=details),
    ]
    report = Report(
        {"hostname": "vm42"},
        str(root),
        "",
        "",
        [
            CheckResult("debian", Status.CRITICAL, findings=findings[:5]),
            CheckResult("rpm", Status.WARNING, findings=findings[5:]),
        ],
    )
    plan = build_plan(report, Request(str(root)))
    assert [(s.label, [f.code for f in s.findings]) for s in plan.steps] == [
        ("alpha 1.0-1 (all)", ["content-differs"])
    ]
    cannot = plan.gathered("cannot")
    assert [f.code for f, _ in cannot] == [
        "database-damaged",
        "package-unsettled",
        "database-damaged",
        "unreadable",
        "config-differs",
    ]
    assert cannot[0][1] == restore
    assert "permission denied" in cannot[3][1]
    assert "no RPM database" in cannot[4][1]


def test_rpm_repair_on_an_rpm_root_from_the_dnf_cache(tmp_path):
    from fixtures import rpmroot

    require_program("rpmbuild", "rpm")
    files = {"/usr/bin/tool": b"#!/bin/sh\necho tool\n" * 100, "/usr/share/tool/data": b"data\n" * 300}
    files["/usr/share/tool/readme"] = b"read me\n"
    rpm = rpmroot.build_rpm(tmp_path / "build", "tool", "2.1", files)
    root = rpmroot.make_root(tmp_path / "root", [rpm])
    flip_byte(root / "usr/bin/tool", 7)
    (root / "usr/share/tool/data").unlink()
    os.chmod(root / "usr/share/tool/readme", 0o600)  # the content is intact: only its mode is wrong
    report = tmp_path / "report.json"
    audited = fsaudit("audit", "--root", root, "--check", "rpm", "--format", "json", "--output", report)
    assert audited.code == 2, audited.stderr
    assert_valid_report(json.loads(report.read_text()))
    planned = repair(report, root)
    assert f"- tool 2.1-1 (noarch) from {root / rpmroot.CACHE / 'tool-2.1-1.noarch.rpm'}: 3 file(s)" in (
        planned.stdout
    )
    assert "/usr/share/tool/data" in planned.stdout
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Checked again with the rpm check: everything restored is intact." in run.stdout
    assert rpmroot.verify_lines(root, "tool") == []
    assert (root / "usr/share/tool/data").read_bytes() == files["/usr/share/tool/data"]
    assert (root / "usr/share/tool/readme").stat().st_mode & 0o777 == 0o644


def test_package_names_follow_each_managers_grammar():
    from fsaudit_checks.debian.dpkg_db import Package
    from fsaudit_checks.debian.repair import spec, valid
    from fsaudit_checks.rpm.repair import Installed, RpmRepairer

    assert valid(Package("libc6", "2.36-9+deb12u4", "amd64"))
    assert spec(Package("libc6", "2.36-9+deb12u4", "amd64")) == "libc6:amd64=2.36-9+deb12u4"
    assert spec(Package("tzdata", "2024a-0+deb12u1", "all")) == "tzdata=2024a-0+deb12u1"
    for name, version, arch in (
        ("--admindir=/tmp/x", "1", "all"),
        ("-oAPT::Update::Pre-Invoke::=touch", "1", "all"),
        ("sed", "--eval=%(id)", "all"),
        ("sed", "4.9-1", "-o"),
        ("sed", "4.9 1", "amd64"),
        ("a", "1", "all"),
    ):
        assert not valid(Package(name, version, arch)), (name, version, arch)

    def installed(name="sed", epoch=None, version="4.8", release="9.el9", arch="x86_64"):
        return Installed(None, name, epoch, version, release, arch, None)

    assert installed().valid() and installed().nevra == "sed-4.8-9.el9.x86_64"
    assert installed(epoch=2).nevra == "sed-2:4.8-9.el9.x86_64"
    assert not installed(name="--eval=%(id > /tmp/PWNED)").valid()
    assert not installed(version="1;id").valid()
    assert not installed(arch="x86_64 --nogpgcheck").valid()
    assert RpmRepairer.transaction(["sed-4.8-9.el9.x86_64"]) == [
        "dnf", "reinstall", "-y", "--", "sed-4.8-9.el9.x86_64"
    ]  # fmt: skip


def test_a_diverted_file_is_restored_where_it_lives(tmp_path):
    from fixtures import debian

    root = debian.make_root(tmp_path / "root")
    original = debian.make_deb(tmp_path, "original", files={"/usr/bin/prog": b"the real program\n" * 100})
    wrapper = debian.make_deb(tmp_path, "wrapper", files={"/usr/bin/prog": b"#!/bin/sh\nexec prog.real\n"})
    debian.install(root, original)
    debian.divert(root, "/usr/bin/prog", "/usr/bin/prog.real", "wrapper")
    debian.install(root, wrapper)
    (root / CACHE / original.name).write_bytes(original.read_bytes())
    flip_byte(root / "usr/bin/prog.real", 3)
    report = report_of(root, tmp_path)
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    assert "Restored: original 1.0-1 (all)" in run.stdout
    assert (root / "usr/bin/prog.real").read_bytes() == b"the real program\n" * 100
    assert (root / "usr/bin/prog").read_bytes() == b"#!/bin/sh\nexec prog.real\n"


def test_owner_and_mode_follow_the_images_statoverride(root, tmp_path):
    # As dpkg-statoverride leaves it: a setuid program owned by ids the image knows.
    (root / "var/lib/dpkg/statoverride").write_text("#1234 #5678 4750 /usr/bin/alpha\n")
    (root / "usr/bin/alpha").unlink()
    report = report_of(root, tmp_path)
    run = repair(report, root, "--apply", "--yes")
    assert run.code == 0, run.stdout + run.stderr
    st = (root / "usr/bin/alpha").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o4750)
