"""`fsaudit repair`: print, and with --apply run, the plan to restore damaged packaged files."""

from __future__ import annotations

import os

import click

from fsaudit.cli.common import (
    EXIT_UNKNOWN,
    read_report,
)
from fsaudit.errors import FsauditError
from fsaudit.repair import apply_plan, build_plan, describe_outcome, describe_plan, outcome_exit_code
from fsaudit.reverify import reverify


@click.command()
@click.argument("report_file", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True),
    help="The system to repair (default: the root the report was made of).",
)
@click.option("--apply", "apply_plan_", is_flag=True, help="Run the plan (after a typed confirmation).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation before --apply.")
@click.option(
    "--allow-conffiles",
    is_flag=True,
    help="Also replace edited or missing configuration files with the packaged version.",
)
@click.option(
    "--archives",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    metavar="DIR",
    help="Look for the package files here too (besides the apt/dnf cache under the root).",
)
def repair(report_file, root, apply_plan_, yes, allow_conffiles, archives) -> int:
    """Print the plan to reinstall the packages whose files REPORT_FILE found damaged; --apply runs it.

    Exit codes: 0 planned, or repaired and re-verified; 2 damage remains on what was reinstalled;
    3 not everything was done (declined, interrupted, a step failed, re-verification incomplete)."""
    loaded = read_report(report_file)
    plan = build_plan(loaded, root or loaded.root, allow_conffiles=allow_conffiles, archives=archives)
    for line in describe_plan(plan):
        click.echo(line)
    if not apply_plan_ or not plan.steps:
        click.echo("Nothing was changed." + (" Run again with --apply to reinstall." if plan.steps else ""))
        return 0
    if os.geteuid() != 0:
        raise FsauditError("repair --apply needs root (the package manager writes system files)")
    if not yes:
        question = f"Type yes to reinstall {len(plan.steps)} package(s) on {plan.root}"
        answer = click.prompt(question, default="")
        if answer.strip() != "yes":
            click.echo("Nothing was changed.")
            return EXIT_UNKNOWN
    outcome = apply_plan(plan, click.echo)
    outcome.still_wrong, method, outcome.verify_problem = reverify(plan.root, outcome.done)
    for line in describe_outcome(outcome, method):
        click.echo(line)
    return outcome_exit_code(outcome)
