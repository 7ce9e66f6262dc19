"""`fsaudit fleet` and `fleet-report` end to end against a real sshd on loopback.

One port of the test sshd = one host. Hosts: two healthy ones running the installed fsaudit (this
venv's, with a third-party `probe` checker), one whose audit finds damage, one that hangs, one down,
one with a changed host key, one with an unknown host key, one without fsaudit (bootstrap with the
bare system python3), one without python."""

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

from fixtures.fleet import (
    SshLab,
    free_port,
    ini_inventory,
    installed_command,
    probe_plugin,
    probe_root,
    sleeping,
)
from tests.conftest import fsaudit, require_program

HANG = "sleep 617"
TEST_USER = "fsaudit-fleet-test"
# a shell start-up file that prints before the loader runs
NOISY_PYTHON = """/bin/sh -c 'echo Welcome to this VM; exec /usr/bin/python3 "$@"' sh"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fleet")
    sshd = require_program("sshd", "openssh-server")
    require_program("ssh", "openssh-client")
    lab = SshLab(directory, sshd)
    try:
        lab.ports = lab.start("main", ports=4)
        lab.changed = lab.start("other", known_as="main")[0]
        lab.unknown = lab.start("stranger", known=False)[0]
        plugin = probe_plugin(directory / "plugin")
        healthy = probe_root(directory / "healthy", "fine\n")
        damaged = probe_root(directory / "damaged", "damaged\n")
        (directory / "empty").mkdir()
        command = installed_command(plugin)
        ports = lab.ports
        probe = "--check probe --root"
        lab.hosts = {
            "healthy1": dict(ansible_port=ports[0], fsaudit_command=command,
                             fsaudit_args=f"{probe} {healthy}"),
            "healthy2": dict(ansible_port=ports[1], fsaudit_command=command,
                             fsaudit_args=f"{probe} {healthy}"),
            "damaged": dict(ansible_port=ports[2], fsaudit_command=command,
                            fsaudit_args=f"{probe} {damaged}"),
            "hangs": dict(ansible_port=ports[3], fsaudit_command=f"sh -c '{HANG}' hang"),
            "bootstrap": dict(ansible_port=ports[3], fsaudit_python="/usr/bin/python3",
                              fsaudit_args=f"--root {directory / 'empty'}"),
            "nopython": dict(ansible_port=ports[3], fsaudit_python="/nonexistent/python3"),
            "down": dict(ansible_port=free_port()),
            "wronguser": dict(ansible_port=ports[0], ansible_user="fsaudit-no-such-user"),
            "garbage": dict(ansible_port=ports[0], fsaudit_command="sh -c 'echo {not a report' garbage"),
            "changedkey": dict(ansible_port=lab.changed),
            "noisy": dict(ansible_port=ports[0], fsaudit_command=command, fsaudit_args=f"{probe} {healthy}",
                          fsaudit_python=NOISY_PYTHON),
            "refuses": dict(ansible_port=ports[0], fsaudit_command=command,
                            fsaudit_args="--check nosuchcheck"),
            "newkey": dict(ansible_port=lab.unknown, fsaudit_command=command,
                             fsaudit_args=f"{probe} {healthy}"),
        }  # fmt: skip
        for variables in lab.hosts.values():
            variables["ansible_host"] = "127.0.0.1"
        groups = {"web": ["healthy1", "healthy2"], "db": ["damaged"]}
        lab.inventory = ini_inventory(directory / "inventory.ini", lab.hosts, groups)
        yield lab
    finally:
        lab.stop()


def fleet(lab, *args):
    return fsaudit(
        "fleet", lab.inventory, "--ssh-config", lab.config, "--concurrency", "10", *args, timeout=300
    )


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "hosts").glob("*.json")}


@pytest.fixture(scope="module")
def first_run(lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    run = fleet(lab, "--out", out, "--timeout", "20")
    return run, out


def test_each_host_gets_its_own_clear_outcome(first_run):
    run, out = first_run
    assert run.code == 2, run.stderr  # damage found on one host: critical wins
    hosts = records(out)
    outcomes = {name: (r["outcome"], r["status"]) for name, r in hosts.items()}
    assert outcomes == {
        "healthy1": ("report", "ok"),
        "healthy2": ("report", "ok"),
        "damaged": ("report", "critical"),
        "hangs": ("timeout", "unknown"),
        "bootstrap": ("report", outcomes["bootstrap"][1]),
        "nopython": ("no-python", "unknown"),
        "down": ("unreachable", "unknown"),
        "changedkey": ("host-key-changed", "unknown"),
        "newkey": ("host-key-unknown", "unknown"),
        "noisy": ("report", "ok"),
        "refuses": ("audit-failed", "unknown"),
        "wronguser": ("auth-refused", "unknown"),
        "garbage": ("bad-output", "unknown"),
    }
    assert "{not a report" in hosts["garbage"]["message"]
    assert "unknown checker 'nosuchcheck'" in hosts["refuses"]["message"]
    assert hosts["healthy1"]["mode"] == "installed" and hosts["bootstrap"]["mode"] == "bootstrap"
    assert "Connection refused" in hosts["down"]["stderr"]
    assert "fleet:" in run.stderr and "results in" in run.stderr


def test_reports_land_as_plain_fsaudit_reports_with_an_index(first_run):
    _, out = first_run
    damaged = json.loads((out / "reports" / "damaged.json").read_text())
    assert [f["code"] for f in damaged["checks"][0]["findings"]] == ["probe-damaged"]
    boot = json.loads((out / "reports" / "bootstrap.json").read_text())
    assert boot["root"].endswith("empty")
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "fsaudit-fleet-index/1" and len(index["hosts"]) == 13
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]
    # the rendered report of one VM works with the ordinary `fsaudit report`
    assert fsaudit("report", out / "reports" / "damaged.json").code == 2


def test_timeout_stops_the_audit_on_the_host(first_run):
    deadline = time.monotonic() + 10
    while sleeping(HANG) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sleeping(HANG)


def test_resume_skips_hosts_that_reported_and_retries_the_others(lab, first_run):
    _, out = first_run
    before = records(out)
    run = fleet(
        lab, "--out", out, "--resume", "--timeout", "20", "--accept-new-host-keys", "--limit", "!hangs"
    )
    after = records(out)
    assert after["healthy1"]["started"] == before["healthy1"]["started"]  # not audited again
    assert (
        after["newkey"]["outcome"] == "report" and after["newkey"]["status"] == "ok"
    )  # retried, key accepted
    assert after["hangs"] == before["hangs"]  # outside --limit: untouched
    assert run.code == 2
    assert "already holds a fleet run" in fleet(lab, "--out", out).stderr


def test_fleet_report_merges_shards_and_ranks_the_worst_first(lab, tmp_path):
    shard_dirs = []
    for index in (1, 2):
        out = tmp_path / f"shard{index}"
        fleet(lab, "--out", out, "--shard", f"{index}/2", "--limit", "web,db,bootstrap,down")
        shard_dirs.append(out)
    names = [set(records(d)) for d in shard_dirs]
    assert not names[0] & names[1] and names[0] | names[1] == {
        "healthy1",
        "healthy2",
        "damaged",
        "bootstrap",
        "down",
    }
    run = fsaudit("fleet-report", *shard_dirs, "--format", "json")
    data = json.loads(run.stdout)
    assert run.code == 2 and data["status"] == "critical"
    assert [h["name"] for h in data["hosts"]][0] == "damaged"
    assert data["totals"]["hosts"] == 5 and data["totals"]["no_report"] == {"unreachable": 1}
    probe = next(c for c in data["codes"] if c["code"] == "probe-damaged")
    assert probe["hosts"] == ["damaged"] and probe["subjects"] == {"probe 1.0": ["damaged"]}
    text = fsaudit("fleet-report", *shard_dirs)
    assert text.code == 2 and text.stdout.splitlines()[0] == "fsaudit fleet report: CRITICAL"
    assert "probe probe-damaged (critical, 1 hosts): damaged" in text.stdout
    page = tmp_path / "fleet.html"
    html = fsaudit("fleet-report", *shard_dirs, "--format", "html", "--output", page)
    assert html.code == 2 and "<td>damaged</td>" in page.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_leaves_a_consistent_directory_that_resume_finishes(lab, tmp_path, sig):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fsaudit", "fleet", str(lab.inventory), "--ssh-config", str(lab.config),
               "--out", str(out), "--limit", "healthy1,hangs", "--timeout", "300"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "hosts" / "healthy1.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 3, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert set(records(out)) == {"healthy1"}  # the host cut short has no record: --resume audits it
    index = json.loads((out / "index.json").read_text())
    assert [h["name"] for h in index["hosts"]] == ["healthy1"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]
    deadline = time.monotonic() + 10
    while sleeping(HANG) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sleeping(HANG)


def test_become_runs_the_audit_through_sudo(lab, tmp_path):
    require_program("sudo", "sudo")
    subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--no-create-home", TEST_USER],
                   stderr=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(["usermod", "-p", "*", TEST_USER], check=True)  # "*": no password, but not locked for sshd
    hang = "sleep 618"
    hosts = {
        "asroot": lab.hosts["healthy1"],
        "nosudo": {**lab.hosts["bootstrap"], "ansible_user": TEST_USER},
        "hangs": {**lab.hosts["hangs"], "fsaudit_command": f"sh -c '{hang}' hang"},
    }
    inventory = ini_inventory(tmp_path / "inventory.ini", hosts)
    out = tmp_path / "out"
    run = fsaudit("fleet", inventory, "--ssh-config", lab.config, "--out", out, "--become", "--timeout", "15")
    outcomes = {name: r["outcome"] for name, r in records(out).items()}
    assert outcomes == {"asroot": "report", "nosudo": "become-failed", "hangs": "timeout"}, run.stderr
    assert run.code == 3
    deadline = time.monotonic() + 10  # the audit under sudo is stopped too
    while sleeping(hang) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sleeping(hang)


def test_a_host_that_hangs_mid_report_is_stopped_long_before_the_timeout(lab, tmp_path):
    hang = "sleep 619"
    half = 'printf %s \'{"format": "fsaudit-report/1", "checks": [\'; ' + hang
    hosts = {"halfway": {**lab.hosts["hangs"], "fsaudit_command": f"sh -c {shlex.quote(half)} halfway"}}
    inventory = ini_inventory(tmp_path / "inventory.ini", hosts)
    out = tmp_path / "out"
    run = fsaudit("fleet", inventory, "--ssh-config", lab.config, "--out", out, "--timeout", "600",
                  "--stall-timeout", "2", timeout=300)  # fmt: skip
    record = records(out)["halfway"]
    assert run.code == 3, run.stderr
    assert record["outcome"] == "timeout" and "--stall-timeout" in record["message"]
    assert not list((out / "reports").iterdir())
    deadline = time.monotonic() + 10  # the hung audit is stopped on the host
    while sleeping(hang) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sleeping(hang)


def test_a_vm_without_the_database_module_reports_its_database_as_not_checked(lab, tmp_path):
    # The bare system python3 has no psycopg: the bootstrapped audit cannot check the cluster it finds,
    # and says so (unknown), instead of skipping it as if there were none (OK to monitoring).
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    hosts = {
        "withdb": {
            **lab.hosts["bootstrap"],
            "fsaudit_args": f"--check postgres --set postgres.data_dir={data_dir}",
        },
        "nodb": {**lab.hosts["bootstrap"], "fsaudit_args": f"--check postgres --root {tmp_path}"},
    }
    inventory = ini_inventory(tmp_path / "inventory.ini", hosts)
    out = tmp_path / "out"
    run = fsaudit("fleet", inventory, "--ssh-config", lab.config, "--out", out, timeout=300)
    assert run.code == 3, run.stderr
    assert {name: r["mode"] for name, r in records(out).items()} == {
        "withdb": "bootstrap",
        "nodb": "bootstrap",
    }
    withdb = json.loads((out / "reports" / "withdb.json").read_text())["checks"][0]
    assert withdb["status"] == "unknown" and "psycopg" in withdb["reason"]
    nodb = json.loads((out / "reports" / "nodb.json").read_text())["checks"][0]
    assert nodb["status"] == "skipped"
