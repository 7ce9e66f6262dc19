"""The `fsaudit` command: parses, calls, and maps outcomes to the monitoring exit codes.

One module per command (as borg does); this one holds the group and `main()`. A checker package
adds a command of its own through the `fsaudit.commands` entry points (the baseline's `baseline
create`), loaded like checkers; every command is imported only when it is used."""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import os
import sys
from typing import Dict, List

import click

from fsaudit import __version__
from fsaudit.cli.common import EXIT_UNKNOWN, LOG
from fsaudit.errors import FsauditError
from fsaudit.escape import inert
from fsaudit.registry import COMMANDS, Plugin, load_plugins

# fsaudit's own commands: name -> "module in fsaudit.cli:attribute".
CORE_COMMANDS = {
    "audit": "audit:audit",
    "self-check": "audit:self_check",
    "checks": "audit:checks",
    "report": "report:report",
    "fleet": "fleet:fleet",
    "fleet-report": "fleet:fleet_report",
    "repair": "repair:repair",
}


def _command_problem(loaded) -> str:
    return "" if isinstance(loaded, click.Command) else "is not a click command"


class _Commands(click.Group):
    """fsaudit's own commands and those the installed checker packages add, each imported when used
    (an audit does not pay for the fleet's code); a core command's name cannot be taken over."""

    def _added(self) -> Dict[str, Plugin]:
        plugins = load_plugins(COMMANDS, _command_problem)
        return {name: plugin for name, plugin in plugins.items() if name not in CORE_COMMANDS}

    def list_commands(self, ctx) -> List[str]:
        return sorted([*CORE_COMMANDS, *self._added(), *self.commands])

    def get_command(self, ctx, name: str):
        if name in self.commands:
            return self.commands[name]
        if name in CORE_COMMANDS:
            module, attribute = CORE_COMMANDS[name].split(":")
            return getattr(importlib.import_module(f"fsaudit.cli.{module}"), attribute)
        plugin = self._added().get(name)
        if plugin is None:
            return None
        if plugin.loaded is None:
            LOG.warning("the command %s cannot be used: %s", name, plugin.error)
            return None
        return plugin.loaded


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


def run() -> None:
    """The `fsaudit` program (its console script and `python -m fsaudit`): `main()`, then the process
    ends without tearing the interpreter down. Freeing every module and object one by one took
    10-25 ms after the report was out, a tenth of an audit of an empty root. The exit handlers still
    run (worker processes end, temporary files go) and the output is flushed first; a library
    caller, a test, and the fleet's bootstrap call `main()` and exit the ordinary way.

    What was imported to get here (click, logging, fsaudit's core) lives as long as the process:
    it is moved out of the garbage collector's way (gc.freeze), which otherwise walked it again
    and again while an audit made its objects (the debian audit of 25,000 files: 23 -> 13 ms of
    collections)."""
    gc.freeze()
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    else:
        code = 0
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, as the exit runs them
    if run_exit_handlers is None or not isinstance(code, int) or isinstance(code, bool):
        sys.exit(code)  # another interpreter, or not our exit code: the ordinary way
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, a closed stream: the report did not get out
            code = code or EXIT_UNKNOWN
    os._exit(code)
