"""The fsaudit(1) manual page, made from the click commands themselves at build time (setup.py), so
it says exactly what `--help` says. `python -m fsaudit.manpage FILE` writes it by hand."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from typing import List

import click

from fsaudit import __version__

EXIT_STATUS = (
    ("0", "no damage found (every check that ran is ok)"),
    ("1", "warnings only: something needs a look, nothing is damaged"),
    ("2", "critical: damage found (wins over everything else)"),
    ("3", "unknown: a check could not run to the end, a host sent no report, bad usage, interrupted"),
)
COMPLETION = (
    ("bash", 'eval "$(_FSAUDIT_COMPLETE=bash_source fsaudit)"', "~/.bashrc"),
    ("zsh", 'eval "$(_FSAUDIT_COMPLETE=zsh_source fsaudit)"', "~/.zshrc"),
    ("fish", "_FSAUDIT_COMPLETE=fish_source fsaudit | source", "~/.config/fish/completions/fsaudit.fish"),
)


def roff(text: str) -> str:
    """`text` safe in a roff line: backslashes and leading dots or quotes cannot become requests."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.splitlines())


def _commands(group: click.Group, context: click.Context) -> List[tuple]:
    """(full name, command, its context) of every command under `group`, depth first."""
    found = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        child = click.Context(command, info_name=name, parent=context)
        found.append((f"{context.command_path} {name}", command, child))
        if isinstance(command, click.Group):
            found.extend(_commands(command, child))
    return found


def _options(command: click.Command, context: click.Context) -> List[str]:
    lines = []
    for param in command.get_params(context):
        if param.name == "help":
            continue
        record = param.get_help_record(context)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{roff(names)}\\fR", roff(help_text or "")]
    return lines


def render_manpage(group: click.Group | None = None) -> str:
    """The manual page of the `fsaudit` command group, as roff."""
    if group is None:
        from fsaudit.cli import cli as group
    root = click.Context(group, info_name="fsaudit")
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds fix the date
    date = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    lines = [
        f'.TH FSAUDIT 1 "{date:%Y-%m-%d}" "fsaudit {__version__}" "User Commands"',
        ".SH NAME",
        "fsaudit \\- find the data a storage incident damaged, and say what to do about it",
        ".SH SYNOPSIS",
    ]
    commands = _commands(group, root)
    for path, command, context in commands:
        if not isinstance(command, click.Group):
            usage = " ".join(command.collect_usage_pieces(context))
            lines += [".br", f"\\fB{roff(path)}\\fR {roff(usage)}"]
    lines += [
        ".SH DESCRIPTION",
        roff(
            "fsaudit compares what is on a Linux system with independent expectations (package "
            "manifests, indexes against their tables, references against their targets, a recorded "
            "baseline) to find data that lost writes at the block layer damaged, and says in plain "
            "words what to do about it. It reads the audited system only, and treats everything it "
            "reads there as hostile."
        ),
        ".SH OPTIONS",
        *_options(group, root),
        ".SH COMMANDS",
    ]
    for path, command, context in commands:
        lines += [".SS " + roff(path), roff(command.help or command.short_help or "")]
        lines += _options(command, context)
    lines += [".SH EXIT STATUS", "The monitoring convention:"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    lines += [
        ".SH FILES",
        ".TP",
        "\\fB/etc/fsaudit/fsaudit.toml\\fR",
        roff("The configuration file, read when present ([audit] settings, [checks.NAME] options)."),
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBNO_COLOR\\fR",
        roff("When set, the text report has no colour."),
        ".SH SHELL COMPLETION",
        roff("Commands, options and checker names complete in bash, zsh and fish. Add to the shell's file:"),
    ]
    for shell, command, where in COMPLETION:
        lines += [".TP", f"\\fB{shell}\\fR ({roff(where)})", roff(command)]
    lines += [
        ".SH SEE ALSO",
        roff("The README of fsaudit: finding codes of every checker, report formats, fleet, repair."),
    ]
    return "\n".join(lines) + "\n"


def write_manpage(path: str) -> str:
    """Write the manual page to `path` (its directory is made); return `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_manpage())
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fsaudit.manpage FILE")
    write_manpage(sys.argv[1])
