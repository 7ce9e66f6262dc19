"""`fsaudit fleet` and `fsaudit fleet-report`: audit many hosts over ssh and view the results."""

from __future__ import annotations

import click

from fsaudit.cli.common import (
    write_output,
)
from fsaudit.fleet.reader import DEFAULT_MAX_BYTES


@click.command(context_settings={"max_content_width": 110})
@click.argument("inventory", type=click.Path(dir_okay=False, exists=True))
@click.argument("audit_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- AUDIT OPTIONS...]")
@click.option(
    "--concurrency",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Hosts audited at the same time.",
)
@click.option(
    "--timeout",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds one host's audit may take (the slowest VM's whole check, cold disk: about an hour "
    "per TB); then it is stopped on the host.",
)
@click.option(
    "--stall-timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds a report that began to arrive may pause before the host counts as hung.",
)
@click.option(
    "--max-report-size",
    default=DEFAULT_MAX_BYTES >> 20,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="MIB",
    help="Largest report accepted from one host, in MiB.",
)
@click.option(
    "--connect-timeout",
    default=15,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds ssh may take to connect.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Result directory (default: fsaudit-fleet-DATETIME)."
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out: skip the hosts whose report came back."
)
@click.option("--shard", metavar="I/N", help="Audit only shard I of N (a stable split by host name).")
@click.option(
    "--limit", "pattern", metavar="PATTERN", help="Host or group globs, ',' separated; '!' excludes."
)
@click.option("--accept-new-host-keys", is_flag=True, help="Accept and remember unknown host keys.")
@click.option("--become", is_flag=True, help="Run the remote audit as root with sudo -n.")
@click.option(
    "--bootstrap/--no-bootstrap",
    default=True,
    show_default=True,
    help="Send fsaudit over ssh and run it from memory where it is not installed.",
)
@click.option("--ssh-config", type=click.Path(dir_okay=False, exists=True), help="ssh config file (ssh -F).")
@click.option(
    "--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE", help="ssh -o option (repeatable)."
)
def fleet(inventory, audit_args, concurrency, timeout, stall_timeout, max_report_size, connect_timeout,
          out, resume, shard, pattern, accept_new_host_keys, become, bootstrap, ssh_config,
          ssh_options) -> int:  # fmt: skip
    """Audit every host of INVENTORY over ssh; one JSON report per host lands in --out.

    INVENTORY is a hosts file ([user@]host[:port] per line) or a static Ansible inventory (INI or
    YAML). Options after `--` go to `fsaudit audit` on every host.
    """
    from fsaudit.fleet.fanout import audit_fleet
    from fsaudit.fleet.remote import Limits
    from fsaudit.fleet.ssh import SshSettings, check_audit_args

    settings = SshSettings(
        connect_timeout=connect_timeout,
        accept_new_host_keys=accept_new_host_keys,
        become=become,
        bootstrap=bootstrap,
        ssh_config=ssh_config,
        options=tuple(ssh_options),
        audit_args=check_audit_args(list(audit_args)),
    )
    limits = Limits(timeout=timeout, stall=stall_timeout, report_bytes=max_report_size << 20)
    return audit_fleet(inventory, settings, out, concurrency, limits, resume, shard, pattern)


@click.command("fleet-report")
@click.argument("directories", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--format", "fmt", default="text", type=click.Choice(["text", "html", "json"]), show_default=True
)
@click.option(
    "--output", type=click.Path(dir_okay=False), help="Write the fleet report here instead of stdout."
)
@click.option(
    "--vm-reports/--no-vm-reports",
    default=True,
    show_default=True,
    help="With --format html, write each VM's own HTML report beside its JSON report and link it.",
)
@click.option(
    "--max-report-size",
    default=DEFAULT_MAX_BYTES >> 20,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="MIB",
    help="Larger VM reports count as hosts without a usable report, in MiB.",
)
def fleet_report(directories, fmt, output, vm_reports, max_report_size) -> int:
    """The fleet view of one or more result directories (shards merge): hosts x checks, worst first."""
    from fsaudit.fleet.view import render_fleet

    text, code = render_fleet(
        list(directories), fmt, vm_reports=vm_reports, output=output, max_bytes=max_report_size << 20
    )
    write_output(text, output)
    return code
