"""`fsaudit report`: render or validate a JSON report saved earlier."""

from __future__ import annotations

import sys

import click

from fsaudit.cli.common import (
    colour_wanted,
    read_json,
    read_report,
    write_output,
)
from fsaudit.errors import FsauditError
from fsaudit.escape import inert
from fsaudit.report import RENDERERS, render
from fsaudit.schema import report_problems


@click.command()
@click.argument("report_file", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option("--format", "fmt", default="text", type=click.Choice(sorted(RENDERERS)), show_default=True)
@click.option("--output", type=click.Path(dir_okay=False))
@click.option("--validate", is_flag=True, help="Only check the file against the report's JSON Schema.")
def report(report_file, fmt, output, validate) -> int:
    """Render a JSON report saved earlier; the exit code is the report's."""
    if validate:
        problems = report_problems(read_json(report_file))
        for problem in problems:
            click.echo(f"{report_file}: {inert(problem)}")
        if problems:
            raise FsauditError(f"{report_file} is not a valid fsaudit report ({len(problems)} problem(s))")
        click.echo(f"{report_file}: a valid fsaudit report")
        return 0
    loaded = read_report(report_file)
    colour = fmt == "text" and output is None and colour_wanted(sys.stdout)
    write_output(render(loaded, fmt, colour=colour), output)
    return loaded.exit_code
