"""The `fsaudit` command: parses, calls, and maps outcomes to the monitoring exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Dict, List, Tuple

import click

from fsaudit import __version__
from fsaudit.baseline import create_baseline
from fsaudit.checker import Context, OptionError
from fsaudit.config import load_config, merge_options, parse_sets
from fsaudit.errors import FsauditError, UsageError
from fsaudit.model import Report
from fsaudit.output import output_file
from fsaudit.progress import Progress
from fsaudit.registry import Entry, load_checkers
from fsaudit.repair import apply_plan, build_plan, describe_outcome, describe_plan, outcome_exit_code
from fsaudit.report import RENDERERS, check_format, format_available, render
from fsaudit.report.text import verdict
from fsaudit.reverify import reverify
from fsaudit.runner import install_hint, missing_module, run_audit
from fsaudit.selfcheck import DEFAULT_FORMATS, DEFAULT_REPORT, self_check_options
from fsaudit.target import Target
from fsaudit.validate import report_problems
from fsaudit.window import Window, WindowError, parse_window, target_timezone

LOG = logging.getLogger("fsaudit")
EXIT_UNKNOWN = 3


def _colour_wanted(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def write_output(text: str, output: str | None) -> None:
    """Write the rendered report to `output` (atomically) or to stdout."""
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    try:
        with output_file(output) as handle:
            handle.write(text)
    except OSError as error:
        raise FsauditError(f"cannot write the report to {output}: {error.strerror}") from None


def select_checkers(
    entries: Dict[str, Entry], only: List[str], skip: List[str], raw_options: Dict[str, Dict[str, list]]
) -> List[Tuple[Entry, Dict[str, Any]]]:
    """The checkers to run with their validated settings; every problem is raised before any runs."""
    for name in list(only) + list(skip) + list(raw_options):
        if name not in entries:
            known = ", ".join(entries) or "none"
            raise UsageError(f"unknown checker {name!r} (checkers: {known})")
    names = [n for n in (only or entries) if n not in skip]
    names.sort(key=lambda n: (entries[n].checker.order if entries[n].checker else 50, n))
    selected = []
    for name in names:
        entry = entries[name]
        settings: Dict[str, Any] = {}
        if entry.checker is not None:
            try:
                settings = entry.checker.validate_options(raw_options.get(name, {}))
            except OptionError as error:
                raise UsageError(str(error)) from None
        selected.append((entry, settings))
    return selected


def _window(text: str | None, root: str) -> Window | None:
    if text is None:
        return None
    try:
        return parse_window(text, target_timezone(root))
    except WindowError as error:
        raise UsageError(f"--window: {error}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command()
@click.option(
    "--root",
    default="/",
    show_default=True,
    type=click.Path(file_okay=False, exists=True),
    help="The root of the system to audit (a mounted image or snapshot).",
)
@click.option("--check", "only", multiple=True, metavar="NAME", help="Run only this checker (repeatable).")
@click.option("--skip", multiple=True, metavar="NAME", help="Do not run this checker (repeatable).")
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
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel workers per checker (default: all cores).")
@click.option(
    "--drop-cache/--no-drop-cache",
    default=None,
    help="Drop each file's cached pages before reading it, so the disk is read "
    "(default: on for /, off under --root).",
)
def audit(root, only, skip, window, sets, config_path, fmt, output, jobs, drop_cache) -> int:
    """Audit ROOT and report what is damaged; the exit code says how bad (0 ok .. 3 unknown)."""
    config = load_config(config_path)
    settings = config.get("audit", {})
    window_text = window if window is not None else settings.get("window")
    only = list(only) or list(settings.get("check", []))
    skip = list(skip) or list(settings.get("skip", []))
    if drop_cache is None:
        drop_cache = settings.get("drop_cache")
    check_format(fmt)
    selected = select_checkers(load_checkers(), only, skip, merge_options(config, parse_sets(list(sets))))
    context = Context(
        jobs=jobs or int(settings.get("jobs") or 0) or os.cpu_count() or 1,
        window=_window(window_text, root),
        progress=Progress.for_terminal(),
    )
    report, interrupted = run_audit(Target(root, drop_cache=drop_cache), selected, context)
    return _deliver(report, interrupted, fmt, output)


def _deliver(report: Report, interrupted: bool, fmt: str, output: str | None) -> int:
    """Write the rendered report and return the audit's exit code (3 when interrupted, unless
    damage was already found)."""
    colour = fmt == "text" and output is None and _colour_wanted(sys.stdout)
    write_output(render(report, fmt, colour=colour), output)
    if interrupted:
        click.echo("fsaudit: interrupted; the report covers what was checked before", err=True)
        return 2 if report.exit_code == 2 else EXIT_UNKNOWN
    return report.exit_code


@cli.command("self-check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--window", metavar="START..END", help="The suspect time window, ISO 8601 at each end.")
@click.option(
    "--baseline",
    "baseline_file",
    type=click.Path(dir_okay=False, exists=True),
    help="A baseline recorded earlier with `fsaudit baseline create`.",
)
@click.option("--set", "sets", multiple=True, metavar="CHECK.KEY=VALUE", help="Set a checker option.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(RENDERERS)),
    help="Report format (default: html, written to fsaudit-self-check.html).",
)
@click.option("--output", type=click.Path(dir_okay=False), help="Where to write the report.")
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel workers (default: all cores).")
def self_check(paths, window, baseline_file, sets, fmt, output, jobs) -> int:
    """Check your own files under PATHS (no root needed): Python environments, git checkouts,
    file formats, and a baseline if you recorded one."""
    raw = parse_sets(list(sets))
    if baseline_file:
        raw.setdefault("baseline", {})["file"] = [os.path.abspath(baseline_file)]
    if fmt is not None:
        check_format(fmt)
    entries = load_checkers()
    names, options = self_check_options(entries, list(paths), raw)
    selected = select_checkers(entries, names, [], options)
    if fmt is None:
        fmt = next(f for f in DEFAULT_FORMATS if format_available(f))
        output = output or DEFAULT_REPORT.format(extension="html" if fmt == "html" else "txt")
    context = Context(
        jobs=jobs or os.cpu_count() or 1, window=_window(window, "/"), progress=Progress.for_terminal()
    )
    report, interrupted = run_audit(Target("/"), selected, context)
    code = _deliver(report, interrupted, fmt, output)
    if output:
        click.echo(verdict(report))
        click.echo(f"The full report is in {output}")
    return code


@cli.group()
def baseline() -> None:
    """Record what your files look like now, to find silent damage later."""


@baseline.command("create")
@click.argument("paths", nargs=-1, required=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="The baseline file to write.")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel workers (default: all cores).")
def baseline_create(paths, output, root, jobs) -> int:
    """Record size, mode, owner, mtime and SHA-256 of every file under PATHS (inside --root)."""
    target = Target(root, drop_cache=False)
    for path in paths:
        if not target.exists(path, follow=True):
            raise UsageError(f"{path} does not exist under {target.root_text}")
    try:
        with output_file(output, "wb") as handle:
            counts = create_baseline(
                target, list(paths), handle, jobs or os.cpu_count() or 1, Progress.for_terminal()
            )
    except OSError as error:
        raise FsauditError(f"cannot write the baseline {output}: {error.strerror}") from None
    recorded = f"{counts['entries']:,} entries ({counts['files']:,} files, {counts['bytes']:,} bytes)"
    click.echo(f"recorded {recorded} in {output}")
    for problem in counts["errors"][:20]:
        click.echo(f"  not recorded: {problem}", err=True)
    if len(counts["errors"]) > 20:
        click.echo(f"  ... and {len(counts['errors']) - 20:,} more not recorded", err=True)
    return 1 if counts["errors"] else 0


@cli.command()
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
            click.echo(f"{'':<{width}}       {why}")
        click.echo(f"{'':<{width}}       from {origin}")
    return 0


def _applicability(entry: Entry, target: Target) -> Tuple[bool, str, str]:
    from fsaudit.checker import Skip

    if entry.checker is None:
        return False, entry.error, ""
    summary = entry.checker.summary()
    module = missing_module(entry.checker)
    if module:
        return False, install_hint(entry.checker, module), summary
    try:
        applies = entry.checker(None, Context()).applies(target)
    except Skip as skip:
        return False, str(skip), summary
    except Exception as error:  # a checker's own bug: report it, list the rest
        LOG.debug("applies() of %s failed", entry.name, exc_info=True)
        return False, f"cannot tell: {type(error).__name__}: {error}", summary
    return applies is not False, "" if applies is not False else "does not apply to this system", summary


@cli.command()
@click.argument("report_file", type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option("--format", "fmt", default="text", type=click.Choice(sorted(RENDERERS)), show_default=True)
@click.option("--output", type=click.Path(dir_okay=False))
@click.option("--validate", is_flag=True, help="Only check the file against the report's JSON Schema.")
def report(report_file, fmt, output, validate) -> int:
    """Render a JSON report saved earlier; the exit code is the report's."""
    if validate:
        problems = report_problems(read_json(report_file))
        for problem in problems:
            click.echo(f"{report_file}: {problem}")
        if problems:
            raise FsauditError(f"{report_file} is not a valid fsaudit report ({len(problems)} problem(s))")
        click.echo(f"{report_file}: a valid fsaudit report")
        return 0
    loaded = read_report(report_file)
    colour = fmt == "text" and output is None and _colour_wanted(sys.stdout)
    write_output(render(loaded, fmt, colour=colour), output)
    return loaded.exit_code


@cli.command(context_settings={"max_content_width": 110})
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
    help="Seconds one host's audit may take; then it is stopped on the host.",
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
def fleet(inventory, audit_args, concurrency, timeout, connect_timeout, out, resume, shard, pattern,
          accept_new_host_keys, become, bootstrap, ssh_config, ssh_options) -> int:  # fmt: skip
    """Audit every host of INVENTORY over ssh; one JSON report per host lands in --out.

    INVENTORY is a hosts file ([user@]host[:port] per line) or a static Ansible inventory (INI or
    YAML). Options after `--` go to `fsaudit audit` on every host.
    """
    from fsaudit.fleet.fanout import audit_fleet
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
    return audit_fleet(inventory, settings, out, concurrency, timeout, resume, shard, pattern)


@cli.command("fleet-report")
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
def fleet_report(directories, fmt, output, vm_reports) -> int:
    """The fleet view of one or more result directories (shards merge): hosts x checks, worst first."""
    from fsaudit.fleet.view import render_fleet

    text, code = render_fleet(list(directories), fmt, vm_reports=vm_reports, output=output)
    write_output(text, output)
    return code


def read_json(path: str) -> Any:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        return json.loads(text)
    except OSError as error:
        raise FsauditError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise FsauditError(f"{path} is not a valid fsaudit report: not JSON: {error}") from None


def read_report(path: str) -> Report:
    data = read_json(path)
    try:
        return Report.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise FsauditError(f"{path} is not a valid fsaudit report: {error}") from None


@cli.command()
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
        click.echo(f"fsaudit: {error}", err=True)
        code = EXIT_UNKNOWN
    except BrokenPipeError:
        code = EXIT_UNKNOWN
    except Exception as error:
        LOG.debug("internal error", exc_info=True)
        click.echo(
            f"fsaudit: internal error: {type(error).__name__}: {error} (run with --debug for details)",
            err=True,
        )
        code = EXIT_UNKNOWN
    sys.exit(code if isinstance(code, int) else 0)
