"""`fsaudit audit`, `fsaudit self-check` and `fsaudit checks`: running the checkers."""

from __future__ import annotations

import os
import sys
from typing import List, Tuple

import click

from fsaudit.checker import Context, Skip
from fsaudit.cli.common import (
    EXIT_UNKNOWN,
    LOG,
    colour_wanted,
    save_json_instead,
    terminate_like_interrupt,
    write_output,
)
from fsaudit.config import load_config, merge_options, parse_sets
from fsaudit.escape import inert
from fsaudit.model import Report
from fsaudit.progress import Progress
from fsaudit.registry import Entry, load_checkers
from fsaudit.report import RENDERERS, check_format, format_available, render
from fsaudit.report.text import verdict
from fsaudit.runner import install_hint, missing_module, run_audit
from fsaudit.selfcheck import DEFAULT_FORMATS, DEFAULT_REPORT, flagged_options, self_check_options
from fsaudit.settings import (
    RunSettings,
    jobs_option,
    read_window,
    run_io_depth,
    run_jobs,
    run_settings,
    select_checkers,
    system_config,
)
from fsaudit.target import Target


def checker_names(context, parameter, incomplete: str) -> list:
    """Shell completion of `--check`/`--skip`: the names of the installed checkers."""
    return [name for name in load_checkers() if name.startswith(incomplete)]


@click.command()
@click.option(
    "--root",
    default="/",
    show_default=True,
    type=click.Path(file_okay=False, exists=True),
    help="The root of the system to audit (a mounted image or snapshot).",
)
@click.option(
    "--check",
    "only",
    multiple=True,
    metavar="NAME",
    shell_complete=checker_names,
    help="Run only this checker (repeatable).",
)
@click.option(
    "--skip",
    multiple=True,
    metavar="NAME",
    shell_complete=checker_names,
    help="Do not run this checker (repeatable).",
)
@click.option("--window", metavar="START..END", help="The suspect time window, ISO 8601 at each end.")
@click.option("--set", "sets", multiple=True, metavar="CHECK.KEY=VALUE", help="Set a checker option.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML config file (default: /etc/fsaudit/fsaudit.toml when present).",
)
@click.option("--format", "fmt", default="text", type=click.Choice(sorted(RENDERERS)), show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the report here instead of stdout.")
@jobs_option()
@click.option(
    "--io-depth",
    type=click.IntRange(min=1, max=1024),
    help="Reads in flight at most (default: 32; network storage likes many, a single disk few).",
)
@click.option(
    "--drop-cache/--no-drop-cache",
    default=None,
    help="Drop each file's cached pages before reading it, so the disk is read "
    "(default: on for /, off under --root).",
)
def audit(root, only, skip, window, sets, config_path, fmt, output, jobs, io_depth, drop_cache) -> int:
    """Audit ROOT and report what is damaged; the exit code says how bad (0 ok .. 3 unknown)."""
    config = load_config(config_path)
    settings = config.get("audit", {})
    window_text = window if window is not None else settings.get("window")
    only = list(only) or list(settings.get("check", []))
    skip = list(skip) or list(settings.get("skip", []))
    if drop_cache is None:
        drop_cache = settings.get("drop_cache")
    check_format(fmt)
    spec = read_window(window_text)
    workers = run_jobs(jobs, settings)
    depth = run_io_depth(io_depth, settings)
    selected = select_checkers(load_checkers(), only, skip, merge_options(config, parse_sets(list(sets))))
    run = run_settings(
        root,
        selected,
        window=spec,
        jobs=workers,
        io_depth=depth,
        drop_cache=drop_cache,
        progress=Progress.for_terminal(),
    )
    return _run(run, fmt, output)[1]


def _run(run: RunSettings, fmt: str, output: str | None) -> Tuple[Report, int]:
    """Run the checkers, write the report; (the report, the exit code)."""
    with terminate_like_interrupt():
        report, interrupted = run_audit(run.target, run.selected, run.context)
    return report, _deliver(report, interrupted, fmt, output)


def _deliver(report: Report, interrupted: bool, fmt: str, output: str | None) -> int:
    """Write the rendered report and return the audit's exit code (3 when interrupted or when the
    report could not be rendered, unless damage was found)."""
    colour = fmt == "text" and output is None and colour_wanted(sys.stdout)
    try:
        text = render(report, fmt, colour=colour)
    except Exception as error:  # an audit of hours must not be lost to a renderer's bug
        LOG.debug("rendering the %s report failed", fmt, exc_info=True)
        saved = save_json_instead(report, output)
        click.echo(
            f"fsaudit: the {fmt} report could not be made ({type(error).__name__}: {inert(str(error))}); "
            f"the whole report is in {inert(saved)} (`fsaudit report` renders it)",
            err=True,
        )
        return 2 if report.exit_code == 2 else EXIT_UNKNOWN
    write_output(text, output)
    if interrupted:
        click.echo("fsaudit: interrupted; the report covers what was checked before", err=True)
        return 2 if report.exit_code == 2 else EXIT_UNKNOWN
    return report.exit_code


class _SelfCheckCommand(click.Command):
    """`self-check`, with the options the installed self-check checkers declare as flags (the
    baseline's `--baseline FILE`): the core names none of them."""

    def get_params(self, ctx: click.Context) -> List[click.Parameter]:
        params = super().get_params(ctx)
        taken = {name for param in params for name in param.opts}
        for flag, (_, option) in sorted(flagged_options(load_checkers()).items()):
            if flag not in taken:
                params.insert(-1, _flag_param(flag, option.help))
        return params


def _flag_param(flag: str, help_text: str) -> click.Option:
    return click.Option(
        [flag, f"flag_{flag.lstrip('-').replace('-', '_')}"],
        type=click.Path(dir_okay=False, exists=True),
        help=help_text,
    )


@click.command("self-check", cls=_SelfCheckCommand)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--window", metavar="START..END", help="The suspect time window, ISO 8601 at each end.")
@click.option("--set", "sets", multiple=True, metavar="CHECK.KEY=VALUE", help="Set a checker option.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(RENDERERS)),
    help="Report format (default: html, written to fsaudit-self-check.html).",
)
@click.option("--output", type=click.Path(dir_okay=False), help="Where to write the report.")
@jobs_option("Parallel workers (default: all cores).")
def self_check(paths, window, sets, fmt, output, jobs, **flags) -> int:
    """Check your own files under PATHS (no root needed): Python environments, git checkouts,
    file formats, and a baseline if you recorded one."""
    raw = parse_sets(list(sets))
    entries = load_checkers()
    for flag, (name, option) in flagged_options(entries).items():
        given = flags.get(f"flag_{flag.lstrip('-').replace('-', '_')}")
        if given:
            raw.setdefault(name, {})[option.name] = [os.path.abspath(given)]
    if fmt is not None:
        check_format(fmt)
    spec = read_window(window)
    workers = run_jobs(jobs, system_config().get("audit", {}))
    names, options = self_check_options(entries, list(paths), raw)
    selected = select_checkers(entries, names, [], options)
    if fmt is None:
        fmt = next(f for f in DEFAULT_FORMATS if format_available(f))
        output = output or DEFAULT_REPORT.format(extension="html" if fmt == "html" else "txt")
    run = run_settings("/", selected, window=spec, jobs=workers, progress=Progress.for_terminal())
    report, code = _run(run, fmt, output)
    if output:
        click.echo(verdict(report))
        click.echo(f"The full report is in {output}")
    return code


@click.command()
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False, exists=True))
def checks(root) -> int:
    """List the checkers, whether each applies to ROOT, and why not."""
    target = Target(root)
    rows = []
    for name, entry in load_checkers().items():
        rows.append((name, *_applicability(entry, target), entry.origin))
    width = max((len(r[0]) for r in rows), default=4)
    for name, applies, why, summary, origin in rows:
        click.echo(f"{name:<{width}}  {'yes' if applies else 'no ':<3}  {summary}")
        if why:
            click.echo(f"{'':<{width}}       {inert(why)}")
        click.echo(f"{'':<{width}}       from {origin}")
    return 0


def _applicability(entry: Entry, target: Target) -> Tuple[bool, str, str]:
    if entry.checker is None:
        return False, entry.error, ""
    summary = entry.checker.summary()
    try:
        checker = entry.checker(None, Context())
        module = missing_module(entry.checker)
        if module:
            return False, _unchecked(checker, target, install_hint(entry.checker, module)), summary
        applies = checker.applies(target)
    except Skip as skip:
        return False, _unchecked(checker, target, str(skip)), summary
    except Exception as error:  # a checker's own bug: report it, list the rest
        LOG.debug("applies() of %s failed", entry.name, exc_info=True)
        return False, f"cannot tell: {type(error).__name__}: {error}", summary
    return applies is not False, "" if applies is not False else "does not apply to this system", summary


def _unchecked(checker, target: Target, reason: str) -> str:
    """Why a checker will not run, and whether an audit will call it unknown (its subject is here)."""
    try:
        here = checker.present(target)
    except Exception:
        LOG.debug("present() of %s failed", checker.name, exc_info=True)
        here = ""
    return f"{reason} ({here} is on this system: an audit reports it as not checked)" if here else reason
