"""What `fsaudit fleet` runs: the system OpenSSH client's argv for one host, built by one plain function.

Using the operator's own `ssh` keeps `~/.ssh/config` (ProxyJump, certificates, the agent, per-host
users) working exactly as it does for them. The remote command is the bootstrap loader run by the VM's
python3 (with `sudo -n` for `--become`); see `fsaudit.fleet.bootstrap`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import List, Tuple

from fsaudit.errors import UsageError
from fsaudit.fleet.bootstrap import loader_config, loader_inline
from fsaudit.fleet.inventory import Host

# Audit options the fleet sets itself: the report must come back as JSON on stdout.
RESERVED_AUDIT_OPTIONS = ("--format", "--output", "-h", "--help")


@dataclass
class SshSettings:
    """How to reach the hosts; the same for every host of a run."""

    connect_timeout: int = 15
    accept_new_host_keys: bool = False
    become: bool = False
    bootstrap: bool = True
    ssh_config: str | None = None
    options: Tuple[str, ...] = ()  # extra `-o KEY=VALUE`
    program: str = "ssh"
    audit_args: List[str] = field(default_factory=list)


def check_audit_args(args: List[str]) -> List[str]:
    """The audit options given after `--`, refusing those the fleet must set itself."""
    for arg in args:
        if arg.split("=", 1)[0] in RESERVED_AUDIT_OPTIONS:
            raise UsageError(f"{arg.split('=', 1)[0]} cannot be given to the remote audit: the fleet sets it")
    return list(args)


def host_audit_args(host: Host, settings: SshSettings) -> List[str]:
    """The run's audit options followed by the host's own (`fsaudit_args` in the inventory)."""
    extra = host.vars.get("fsaudit_args") or []
    extra = [str(a) for a in extra] if isinstance(extra, list) else shlex.split(str(extra))
    return check_audit_args(settings.audit_args + extra)


def remote_command(host: Host, settings: SshSettings, zip_sha256: str) -> str:
    """The command line the VM's login shell runs: the loader, with `sudo -n` for --become."""
    config = loader_config(
        host.fsaudit_command, host_audit_args(host, settings), settings.bootstrap, zip_sha256
    )
    words = shlex.split(host.python)
    if settings.become:
        words = ["sudo", "-n", "--", *words]
    words += ["-I", "-S", "-c", loader_inline(), config]  # -S: see bootstrap.LOADER
    return " ".join(shlex.quote(word) for word in words)


def ssh_argv(host: Host, settings: SshSettings, zip_sha256: str) -> List[str]:
    """The complete argv of the `ssh` process that audits `host`."""
    strict = "accept-new" if settings.accept_new_host_keys else "yes"
    argv = [settings.program]
    if settings.ssh_config:
        argv += ["-F", settings.ssh_config]
    for option in settings.options:  # first: for ssh the first value given wins
        argv += ["-o", option]
    argv += [
        "-T",  # no pty: stdin carries the zipapp, stdout the report, stderr stays apart
        "-o", "BatchMode=yes",
        "-o", f"StrictHostKeyChecking={strict}",
        "-o", f"ConnectTimeout={settings.connect_timeout}",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
    ]  # fmt: skip
    if host.user:
        argv += ["-l", host.user]
    if host.port:
        argv += ["-p", str(host.port)]
    argv += ["--", host.address, remote_command(host, settings, zip_sha256)]
    return argv
