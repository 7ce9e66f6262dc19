"""The ssh argv and the remote command, built by plain functions (no ssh involved)."""

import base64
import json
import shlex

import pytest

from fsaudit.errors import UsageError
from fsaudit.fleet.bootstrap import LOADER
from fsaudit.fleet.inventory import Host
from fsaudit.fleet.ssh import SshSettings, ssh_argv


def _loader_config(remote: str) -> dict:
    words = shlex.split(remote)
    code = words[words.index("-c") + 1]
    assert base64.b64decode(code.split('"')[1]).decode() == LOADER
    return json.loads(base64.b64decode(words[-1]))


def test_argv_is_batch_mode_strict_and_ends_with_host_and_command():
    host = Host("db1", "10.0.0.5", user="admin", port=2222, vars={"fsaudit_args": "--root /mnt/vm"})
    argv = ssh_argv(host, SshSettings(connect_timeout=7, audit_args=["--check", "debian"]), "abc")
    assert argv[0] == "ssh" and "-T" in argv
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout=7"} <= set(options)
    assert argv[argv.index("-l") + 1] == "admin" and argv[argv.index("-p") + 1] == "2222"
    assert argv[-3:-1] == ["--", "10.0.0.5"]
    words = shlex.split(argv[-1])
    assert words[:2] == ["python3", "-I"] and "sudo" not in words
    config = _loader_config(argv[-1])
    assert config == {"command": None, "args": ["--check", "debian", "--root", "/mnt/vm"], "bootstrap": True,
                      "sha256": "abc"}  # fmt: skip


def test_become_new_keys_config_and_installed_command():
    host = Host(
        "vm",
        "vm",
        vars={
            "fsaudit_command": "/opt/fsaudit/bin/fsaudit",
            "ansible_python_interpreter": "/usr/bin/python3.9",
        },
    )
    settings = SshSettings(
        become=True, accept_new_host_keys=True, bootstrap=False, ssh_config="/etc/fleet/ssh_config",
        options=("ProxyJump=bastion",),
    )  # fmt: skip
    argv = ssh_argv(host, settings, "abc")
    assert argv[1:3] == ["-F", "/etc/fleet/ssh_config"]
    assert "StrictHostKeyChecking=accept-new" in argv and "ProxyJump=bastion" in argv
    assert argv.index("ProxyJump=bastion") < argv.index("BatchMode=yes")  # the operator's -o wins
    assert shlex.split(argv[-1])[:4] == ["sudo", "-n", "--", "/usr/bin/python3.9"]
    config = _loader_config(argv[-1])
    assert config["command"] == ["/opt/fsaudit/bin/fsaudit"] and config["bootstrap"] is False


def test_the_fleet_sets_format_and_output_itself():
    host = Host("vm", "vm", vars={"fsaudit_args": "--format text"})
    with pytest.raises(UsageError, match="--format"):
        ssh_argv(host, SshSettings(), "abc")
    with pytest.raises(UsageError, match="--output"):
        ssh_argv(Host("vm", "vm"), SshSettings(audit_args=["--output=/tmp/x"]), "abc")
