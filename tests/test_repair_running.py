"""`fsaudit repair` on a running system (apt), exercised in a throwaway one: this machine's programs
seen through an overlay in private namespaces, with its own dpkg database and a local repository
(fixtures.debroot.RunningSystem), so that nothing here touches this machine's packages.

The acceptance case of issue 15: libc6 and a package whose maintainer script needs it are both
damaged. Reinstalled one at a time in alphabetical order, ca-certificates' postinst ran while libc6
was still damaged and crashed; in one transaction every file is restored before anything is
configured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.corrupt import flip_byte, zero_block
from fixtures.debroot import RunningSystem, make_deb
from tests.conftest import require_program

LIBC = "/usr/lib/fsaudit-libc/libc.sh"
# What a program linked with a damaged libc6 does: crash.
NEEDS_LIBC = (
    f'#!/bin/sh\nset -e\nif [ "$(sh {LIBC})" != LIBC-OK ]; then echo "Segmentation fault" >&2; exit 139; fi\n'
)
CERT = "/usr/share/ca-certificates/fsaudit/ca.crt"
FSAUDIT = f"{sys.executable} -m fsaudit"


@pytest.fixture(autouse=True)
def _programs():
    for program, package in (
        ("unshare", "util-linux"),
        ("dpkg-scanpackages", "dpkg-dev"),
        ("apt-get", "apt"),
    ):
        require_program(program, package)


def libc6(work: Path, postinst: str = "") -> Path:
    """A stand-in for libc6: what the others' maintainer scripts run."""
    scripts = {"postinst": postinst} if postinst else None
    return make_deb(
        work,
        "libc6",
        "2.36-9fsaudit1",
        {LIBC: b"echo LIBC-OK\n" + b"#" * 6000 + b"\n"},
        scripts=scripts,
    )


def ca_certificates(work: Path) -> Path:
    postinst = NEEDS_LIBC + f"mkdir -p /etc/ssl/certs\ncat {CERT} > /etc/ssl/certs/fsaudit.pem\n"
    return make_deb(
        work,
        "ca-certificates",
        "20230311fsaudit1",
        {CERT: b"-----BEGIN CERTIFICATE-----\n" + b"QUJD" * 400 + b"\n"},
        control="Depends: libc6\n",
        scripts={"postinst": postinst},
    )


def damaged_system(tmp_path: Path, debs, name: str = "system") -> RunningSystem:
    system = RunningSystem(tmp_path / name)
    system.install(debs)
    zero_block(system.path(LIBC), 0, 4096)
    flip_byte(system.path(CERT), 30)
    return system


def audit(system: RunningSystem) -> dict:
    done = system.run(f"{FSAUDIT} audit --check debian --format json --output /tmp/report.json")
    assert done.returncode == 2, done.stdout + done.stderr
    return json.loads(system.path("/tmp/report.json").read_text())


def test_libc6_and_a_package_whose_script_needs_it_are_restored_in_one_transaction(tmp_path):
    debs = [libc6(tmp_path), ca_certificates(tmp_path)]
    # The way repair used to do it, one package at a time, alphabetically: the postinst crashes.
    old = damaged_system(tmp_path, debs, "one-at-a-time")
    one = old.run(
        "DEBIAN_FRONTEND=noninteractive apt-get install --reinstall -y ca-certificates=20230311fsaudit1"
    )
    assert one.returncode != 0 and "Segmentation fault" in one.stdout + one.stderr
    system = damaged_system(tmp_path, debs)
    report = audit(system)
    assert {(f["path"], f["code"]) for f in report["checks"][0]["findings"]} == {
        (LIBC, "content-differs"),
        (CERT, "content-differs"),
    }
    assert system.path("/etc/ssl/certs/fsaudit.pem").exists()
    system.path("/etc/ssl/certs/fsaudit.pem").unlink()
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "reinstalling 2 package(s) in one transaction: apt-get install --reinstall --no-remove -y" in out
    assert "-- ca-certificates=20230311fsaudit1 libc6=2.36-9fsaudit1" in out
    assert "Restored: ca-certificates 20230311fsaudit1 (all), libc6 2.36-9fsaudit1 (all)" in out
    assert "Checked again with the debian check: everything restored is intact." in out
    assert "FAILED" not in out
    # ca-certificates' postinst ran, after libc6 was whole again.
    assert system.path("/etc/ssl/certs/fsaudit.pem").read_bytes() == system.path(CERT).read_bytes()
    assert (
        system.must("dpkg-query -W -f '${db:Status-Status} ' libc6 ca-certificates") == "installed installed "
    )
    # Nothing of this reached this machine.
    assert not Path("/etc/ssl/certs/fsaudit.pem").exists() and not Path(LIBC).exists()


def test_what_did_not_finish_is_configured_again_once_the_rest_is_whole(tmp_path):
    # A maintainer script that fails the first time it runs (a transient failure: a lock, a service
    # not up yet): the transaction leaves the package unconfigured, the second try configures it.
    once = "/var/lib/fsaudit-certs/failed-once"
    cert = make_deb(
        tmp_path,
        "aaa-certs",
        "1",
        {CERT: b"certificate\n" * 100},
        scripts={
            "postinst": NEEDS_LIBC
            + f"if [ ! -e {once} ]; then mkdir -p /var/lib/fsaudit-certs; touch {once}; "
            'echo "cannot reach the service yet" >&2; exit 1; fi\n'
        },
    )
    system = RunningSystem(tmp_path / "system")
    system.must(f"mkdir -p /var/lib/fsaudit-certs; touch {once}")
    system.install([libc6(tmp_path), cert])
    system.must(f"rm {once}")
    zero_block(system.path(LIBC), 0, 4096)
    flip_byte(system.path(CERT), 30)
    audit(system)
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    out = run.stdout
    assert "once more, now that the rest is whole: dpkg --configure -- aaa-certs" in out, out + run.stderr
    assert run.returncode == 0, out + run.stderr
    assert "Restored: aaa-certs 1 (all), libc6 2.36-9fsaudit1 (all)" in out
    assert "FAILED" not in out
    assert system.must("dpkg-query -W -f '${db:Status-Status} ' aaa-certs libc6") == "installed installed "


def test_a_package_that_keeps_failing_is_never_called_intact(tmp_path):
    broken = make_deb(
        tmp_path,
        "broken",
        "1",
        {"/usr/share/broken/data": b"data\n" * 100},
        scripts={"postinst": "#!/bin/sh\n[ -e /etc/broken-may-configure ] || exit 1\n"},
    )
    system = RunningSystem(tmp_path / "system")
    system.must("touch /etc/broken-may-configure")
    system.install([libc6(tmp_path), broken])
    system.must("rm /etc/broken-may-configure")
    zero_block(system.path(LIBC), 0, 4096)
    flip_byte(system.path("/usr/share/broken/data"), 3)
    audit(system)
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    out = run.stdout
    assert run.returncode == 3, out + run.stderr
    assert "FAILED: broken 1 (all): dpkg left it half-configured" in out
    assert "Restored: libc6 2.36-9fsaudit1 (all)" in out
    assert "everything restored is intact" not in out
    assert "what was restored is intact; the rest is not done" in out


def test_a_report_from_another_machine_changes_nothing(tmp_path):
    system = damaged_system(tmp_path, [libc6(tmp_path), ca_certificates(tmp_path)])
    audit(system)
    data = json.loads(system.path("/tmp/report.json").read_text())
    data["host"]["machine_id"] = "f" * 32
    system.path("/tmp/report.json").write_text(json.dumps(data))
    before = system.path(LIBC).read_bytes()
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 3
    assert "the report is about vm-live (machine-id ffffffffffffffffffffffffffffffff)" in run.stderr
    assert system.path(LIBC).read_bytes() == before


def test_a_version_the_repositories_no_longer_have_comes_from_the_apt_cache(tmp_path):
    libc = libc6(tmp_path)
    system = damaged_system(tmp_path, [libc, ca_certificates(tmp_path)])
    audit(system)
    # The mirror moved on: libc6 2.36-9fsaudit1 is gone from it, but apt's cache still holds it.
    (system.repo / libc.name).unlink()
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=system.repo, capture_output=True)
    (system.repo / "Packages").write_bytes(index.stdout)
    system.must("apt-get update -qq")
    system.path("/var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
    system.path(f"/var/cache/apt/archives/{libc.name}").write_bytes(libc.read_bytes())
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"-- ca-certificates=20230311fsaudit1 /var/cache/apt/archives/{libc.name}" in run.stdout
    assert "Restored: ca-certificates 20230311fsaudit1 (all), libc6 2.36-9fsaudit1 (all)" in run.stdout


def test_a_version_nowhere_to_be_found_is_said_and_the_rest_is_restored(tmp_path):
    libc = libc6(tmp_path)
    cert = ca_certificates(tmp_path)
    system = damaged_system(tmp_path, [libc, cert])
    audit(system)
    (system.repo / cert.name).unlink()
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=system.repo, capture_output=True)
    (system.repo / "Packages").write_bytes(index.stdout)
    system.must("apt-get update -qq")
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "FAILED: ca-certificates 20230311fsaudit1 (all): apt cannot get" in run.stdout
    assert "--archives DIR" in run.stdout
    assert "Restored: libc6 2.36-9fsaudit1 (all)" in run.stdout


def test_a_package_with_a_local_change_is_reinstalled_only_when_asked(tmp_path):
    libc = libc6(tmp_path)
    tool = make_deb(
        tmp_path, "tool", "1", {"/usr/bin/tool": b"#!/bin/sh\necho tool\n", "/usr/share/tool/a": b"a\n" * 50}
    )
    system = RunningSystem(tmp_path / "system")
    system.install([libc, tool])
    # The admin replaced the program (a day after installation); a lost write hit the data file.
    system.must("echo '#!/bin/sh' > /usr/bin/tool; touch -d '+1 day' /usr/bin/tool")
    flip_byte(system.path("/usr/share/tool/a"), 1)
    zero_block(system.path(LIBC), 0, 4096)
    audit(system)
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "reinstalling tool would also undo the 1 local change(s) left alone in it" in run.stdout
    assert "Restored: libc6 2.36-9fsaudit1 (all)" in run.stdout
    assert system.path("/usr/bin/tool").read_text() == "#!/bin/sh\n"
    run = system.run(f"{FSAUDIT} repair /tmp/report.json --apply --yes --include-modified")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Restored: tool 1 (all)" in run.stdout
    assert system.path("/usr/bin/tool").read_text() == "#!/bin/sh\necho tool\n"
