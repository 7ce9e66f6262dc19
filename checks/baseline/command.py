"""`fsaudit baseline create`: record what files look like now (a command the baseline package adds to
fsaudit through the `fsaudit.commands` entry points)."""

from __future__ import annotations

import click

from fsaudit.errors import FsauditError, UsageError
from fsaudit.escape import inert
from fsaudit.output import output_file
from fsaudit.progress import Progress
from fsaudit.settings import jobs_option, run_jobs, system_config
from fsaudit.target import Target


@click.group()
def baseline() -> None:
    """Record what your files look like now, to find silent damage later."""


@baseline.command("create")
@click.argument("paths", nargs=-1, required=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="The baseline file to write.")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False, exists=True))
@jobs_option("Parallel workers (default: all cores).")
def baseline_create(paths, output, root, jobs) -> int:
    """Record size, mode, owner, mtime and SHA-256 of every file under PATHS (inside --root)."""
    from fsaudit_checks.baseline.record import create_baseline

    workers = run_jobs(jobs, system_config().get("audit", {}))
    target = Target(root, drop_cache=False)
    for path in paths:
        if not target.exists(path, follow=True):
            raise UsageError(f"{path} does not exist under {target.root_text}")
    try:
        with output_file(output, "wb") as handle:
            counts = create_baseline(target, list(paths), handle, workers, Progress.for_terminal())
    except OSError as error:
        raise FsauditError(f"cannot write the baseline {output}: {error.strerror}") from None
    recorded = f"{counts['entries']:,} entries ({counts['files']:,} files, {counts['bytes']:,} bytes)"
    click.echo(f"recorded {recorded} in {output}")
    for problem in counts["errors"][:20]:
        click.echo(f"  not recorded: {inert(str(problem))}", err=True)
    if len(counts["errors"]) > 20:
        click.echo(f"  ... and {len(counts['errors']) - 20:,} more not recorded", err=True)
    return 1 if counts["errors"] else 0
