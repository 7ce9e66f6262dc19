"""contrib/ansible/fsaudit-audit.yml, run by a real ansible-playbook (ansible-core from PyPI, the
`test` extra) against the loopback sshd of the fleet tests: it audits two hosts (one damaged), brings
the JSON reports home, and `fleet-report` reads them like a `fsaudit fleet` result directory."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.fleet import SshLab, installed_command, probe_plugin, probe_root
from tests.conftest import REPO, fsaudit, require_program

PLAYBOOK = REPO / "contrib" / "ansible" / "fsaudit-audit.yml"


def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable))
    if not found:
        pytest.fail("ansible-playbook is missing: pip install -e '.[test]' (ansible-core)")
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ansible")
    lab = SshLab(directory, require_program("sshd", "openssh-server"))
    require_program("ssh", "openssh-client")
    try:
        lab.ports = lab.start("main", ports=2)
        lab.plugin = probe_plugin(directory / "plugin")
        lab.healthy = probe_root(directory / "healthy", "fine\n")
        lab.damaged = probe_root(directory / "damaged", "damaged\n")
        yield lab
    finally:
        lab.stop()


def inventory(lab, path: Path) -> Path:
    """An Ansible inventory of two hosts on the lab's ports, reached with the lab's ssh config."""
    common = {
        "ansible_host": "127.0.0.1",
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": f"-F {lab.config}",
        "fsaudit_command": installed_command(lab.plugin),
    }
    hosts = {
        "web1": {
            **common,
            "ansible_port": lab.ports[0],
            "fsaudit_args": f"--check probe --root {lab.healthy}",
        },
        "db1": {
            **common,
            "ansible_port": lab.ports[1],
            "fsaudit_args": f"--check probe --root {lab.damaged}",
        },
    }
    lines = ["[vms]"]
    for name, variables in hosts.items():
        lines.append(
            " ".join([name] + [f"{key}={shlex.quote(str(value))}" for key, value in variables.items()])
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_playbook_audits_hosts_and_fleet_report_reads_what_it_brought_home(lab, tmp_path):
    out = tmp_path / "incident"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_CONFIG": str(tmp_path / "no-ansible.cfg"),  # nothing from this machine's ansible.cfg
    }
    done = subprocess.run(
        [ansible_playbook(), "-i", str(inventory(lab, tmp_path / "hosts.ini")), str(PLAYBOOK),
         "-e", f"fsaudit_out={out}"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["db1.json", "web1.json"]
    damaged = json.loads((out / "reports" / "db1.json").read_text())
    assert [f["code"] for f in damaged["checks"][0]["findings"]] == ["probe-damaged"]

    view = fsaudit("fleet-report", out, "--format", "json")
    data = json.loads(view.stdout)
    assert view.code == 2 and data["status"] == "critical"
    assert {h["name"]: h["status"] for h in data["hosts"]} == {"db1": "critical", "web1": "ok"}
    assert [h["name"] for h in data["hosts"]][0] == "db1"
    assert data["totals"]["no_report"] == {}
