"""`fsaudit repair`: print, and with --apply carry out, the plan to restore what a report found damaged."""

from __future__ import annotations

import os
from datetime import datetime

import click

from fsaudit.cli.common import EXIT_UNKNOWN, read_report
from fsaudit.errors import FsauditError
from fsaudit.model import Report
from fsaudit.repair import Request, Stop, apply_plan, build_plan, outcome_exit_code
from fsaudit.repair.commands import interruptible
from fsaudit.repair.describe import describe_outcome, describe_plan
from fsaudit.repair.host import check_same_machine
from fsaudit.repair.recheck import recheck
from fsaudit.window import Window


@click.command()
@click.argument("report_file", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True),
    help="The mounted image to repair (default: this running system, when the report is about it).",
)
@click.option("--apply", "apply_plan_", is_flag=True, help="Carry out the plan (after a typed confirmation).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation before --apply.")
@click.option(
    "--allow-conffiles",
    is_flag=True,
    help="Also replace edited or missing configuration files with the packaged version.",
)
@click.option(
    "--include-modified",
    is_flag=True,
    help="Also restore files changed on the system after their package was installed.",
)
@click.option(
    "--archives",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    metavar="DIR",
    help="Look for package files here too (besides the package manager's cache).",
)
def repair(report_file, root, apply_plan_, yes, allow_conffiles, include_modified, archives) -> int:
    """Print the plan to restore the packaged files REPORT_FILE found damaged; --apply carries it out.

    Without --root, repair acts on this running system, and only with a report made on it. With
    --root DIR, it acts on the image mounted there and runs nothing from it.

    Exit codes: 0 planned, or restored and checked again; 2 damage remains on what was restored;
    3 not everything was done (declined, interrupted, a step failed, checking again incomplete)."""
    loaded = read_report(report_file)
    request = Request(
        root or "/",
        allow_conffiles=allow_conffiles,
        include_modified=include_modified,
        archives=tuple(os.path.abspath(directory) for directory in archives),
        window=_window(loaded),
    )
    if request.live:
        check_same_machine(loaded)
    plan = build_plan(loaded, request)
    for line in describe_plan(plan):
        click.echo(line)
    if not apply_plan_ or not plan.steps:
        click.echo("Nothing was changed." + (" Run again with --apply to restore." if plan.steps else ""))
        return 0
    if os.geteuid() != 0:
        raise FsauditError("repair --apply needs root (it writes system files)")
    if not yes:
        where = "this system" if request.live else plan.root
        answer = click.prompt(f"Type yes to restore {len(plan.steps)} package(s) on {where}", default="")
        if answer.strip() != "yes":
            click.echo("Nothing was changed.")
            return EXIT_UNKNOWN
    with interruptible(Stop()) as stop:
        outcome = apply_plan(plan, click.echo, stop)
    outcome.still_wrong, method, outcome.verify_problem = recheck(plan, outcome.done)
    for line in describe_outcome(outcome, method):
        click.echo(line)
    return outcome_exit_code(outcome)


def _window(report: Report) -> Window | None:
    """The report's suspect window: a change inside it is at risk, not a local change to keep."""
    window = report.window if isinstance(report.window, dict) else None
    if not window:
        return None
    try:
        ends = [datetime.fromisoformat(window[key]) if window.get(key) else None for key in ("start", "end")]
    except (TypeError, ValueError):
        return None
    if any(end is not None and end.tzinfo is None for end in ends):
        return None
    return Window(*ends)
