"""What every command shares: reading reports, writing output, stopping on SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import click

from fsaudit.errors import FsauditError
from fsaudit.model import Report
from fsaudit.output import output_file

LOG = logging.getLogger("fsaudit")
EXIT_UNKNOWN = 3


def colour_wanted(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


@contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM (from `timeout`, systemd, cron, a fleet run giving up) ends the work inside the block as
    Ctrl-C does, so that the report of what was done is still written. After the block SIGTERM is
    ignored: what follows is writing that report, which is what the sender is waiting for (systemd
    sends SIGKILL when it will wait no longer)."""

    def interrupt(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (fsaudit used as a library): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


def save_json_instead(report: Report, output: str | None) -> str:
    """Save `report` as JSON when the format asked for could not be made: beside `output`
    (OUTPUT.json), or in the current directory; where that fails too, on stdout. Returns where."""
    if output and output != "-" and not output.endswith(".json"):
        candidates = [f"{output}.json"]
    else:
        candidates = [time.strftime("fsaudit-report-%Y%m%dT%H%M%S.json")]
    for path in candidates:
        try:
            with output_file(path) as handle:
                handle.write(report.to_json())
            return path
        except OSError as error:
            LOG.debug("cannot save the report in %s: %s", path, error)
    click.echo(report.to_json(), nl=False)
    return "standard output"


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
