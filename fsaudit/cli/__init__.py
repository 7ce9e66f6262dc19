"""The `fsaudit` command: parses, calls, and maps outcomes to the monitoring exit codes.

One module per command (as borg does); this one holds the group and `main()`."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import List

import click

from fsaudit import __version__
from fsaudit.cli.common import EXIT_UNKNOWN, LOG
from fsaudit.errors import FsauditError
from fsaudit.escape import inert


class _Commands(click.Group):
    """The commands, each imported when it is used: an audit does not pay for the fleet's code."""

    WHERE = {
        "audit": "audit:audit",
        "self-check": "audit:self_check",
        "checks": "audit:checks",
        "baseline": "baseline:baseline",
        "report": "report:report",
        "fleet": "fleet:fleet",
        "fleet-report": "fleet:fleet_report",
        "repair": "repair:repair",
    }

    def list_commands(self, ctx) -> List[str]:
        return sorted(self.WHERE)

    def get_command(self, ctx, name: str):
        if name not in self.WHERE:
            return None
        module, attribute = self.WHERE[name].split(":")
        return getattr(importlib.import_module(f"fsaudit.cli.{module}"), attribute)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fsaudit")
@click.option("--debug", is_flag=True, help="Log what happens, with tracebacks, on stderr.")
def cli(debug: bool) -> None:
    """Find the data a storage incident damaged, and say what to do about it."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if debug:
        LOG.setLevel(logging.DEBUG)


def main(argv: List[str] | None = None) -> None:
    """Entry point: runs the CLI and exits with the monitoring exit code."""
    try:
        code = cli.main(args=argv, prog_name="fsaudit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("fsaudit: interrupted", err=True)
        code = EXIT_UNKNOWN
    except KeyboardInterrupt:
        click.echo("\nfsaudit: interrupted", err=True)
        code = EXIT_UNKNOWN
    except click.exceptions.ClickException as error:
        error.show()
        code = EXIT_UNKNOWN
    except FsauditError as error:
        click.echo(f"fsaudit: {inert(str(error))}", err=True)
        code = EXIT_UNKNOWN
    except BrokenPipeError:
        code = EXIT_UNKNOWN
    except Exception as error:
        LOG.debug("internal error", exc_info=True)
        what = f"{type(error).__name__}: {inert(str(error))}"
        click.echo(f"fsaudit: internal error: {what} (run with --debug for details)", err=True)
        code = EXIT_UNKNOWN
    sys.exit(code if isinstance(code, int) else 0)
