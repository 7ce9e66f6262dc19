"""The inputs of one run, each worked out once by the CLI (as flake8's `Manager` counts its jobs once).

The root becomes one Target, whose /etc/localtime gives the audited system's time zone once; the
window is read once and placed in that zone; `--jobs` has one default (`[audit] jobs` of the config,
else every core) and one clamp; every selected checker's options are parsed once, before the first
checker runs. The checkers see the result in their `Context`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import click

from fsaudit.checker import Context, OptionError, Settings
from fsaudit.config import DEFAULT_CONFIG, load_config
from fsaudit.errors import UsageError
from fsaudit.progress import Progress
from fsaudit.registry import Entry
from fsaudit.target import Target
from fsaudit.window import WindowError, WindowSpec, target_timezone

LOG = logging.getLogger(__name__)

Selected = List[Tuple[Entry, Settings]]


def default_jobs() -> int:
    """Workers when neither `--jobs` nor the config says: every core."""
    return os.cpu_count() or 1


def jobs_option(help_text: str = "Parallel workers per checker (default: all cores)."):
    """The `--jobs` option of every command that takes one (read with `run_jobs`)."""
    return click.option("--jobs", type=click.IntRange(min=1), help=help_text)


def run_jobs(given: int | None, audit_config: Dict[str, Any]) -> int:
    """`--jobs`, else `[audit] jobs` of the config, else every core; never below one."""
    return _whole_number("jobs", given, audit_config, default_jobs())


def run_io_depth(given: int | None, audit_config: Dict[str, Any]) -> int:
    """`--io-depth`, else `[audit] io_depth` of the config, else the engine's default; never below one."""
    return _whole_number("io_depth", given, audit_config, Context.io_depth)


def _whole_number(key: str, given: int | None, audit_config: Dict[str, Any], default: int) -> int:
    value = given if given is not None else audit_config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"[audit] {key} must be a whole number, not {value!r}")
    return max(1, value)


def system_config() -> Dict[str, Any]:
    """The system-wide config for a command without `--config` (self-check, baseline create): only its
    `[audit]` settings count there. A file this user may not read is left out, not an error: a
    customer's self-check must not fail on the administrator's private config."""
    if os.path.exists(DEFAULT_CONFIG) and not os.access(DEFAULT_CONFIG, os.R_OK):
        LOG.debug("%s is not readable by this user: its settings do not apply", DEFAULT_CONFIG)
        return {}
    return load_config(None)


def read_window(text: str | None, option: str = "--window") -> WindowSpec | None:
    """`--window` read once, before anything slow (its zone is applied when the root is known)."""
    if text is None:
        return None
    try:
        return WindowSpec.parse(text)
    except WindowError as error:
        raise UsageError(f"{option}: {error}") from None


def select_checkers(
    entries: Dict[str, Entry], only: List[str], skip: List[str], raw_options: Dict[str, Dict[str, list]]
) -> Selected:
    """The checkers to run with their parsed settings; every problem is raised before any runs."""
    for name in list(only) + list(skip) + list(raw_options):
        if name not in entries:
            known = ", ".join(entries) or "none"
            raise UsageError(f"unknown checker {name!r} (checkers: {known})")
    names = [n for n in (only or entries) if n not in skip]
    names.sort(key=lambda n: (entries[n].checker.order if entries[n].checker else 50, n))
    selected = []
    for name in names:
        entry = entries[name]
        settings = Settings()
        if entry.checker is not None:
            try:
                settings = entry.checker.validate_options(raw_options.get(name, {}))
            except OptionError as error:
                raise UsageError(str(error)) from None
        selected.append((entry, settings))
    return selected


@dataclass
class RunSettings:
    """Everything one run of the checkers needs, worked out once: the Target, the checkers with their
    parsed options, and the Context every checker gets (time zone, window, jobs, io depth, progress)."""

    target: Target
    selected: Selected
    context: Context


def run_settings(
    root: str,
    selected: Selected,
    *,
    window: WindowSpec | None = None,
    jobs: int | None = None,
    io_depth: int | None = None,
    drop_cache: bool | None = None,
    progress: Progress | None = None,
) -> RunSettings:
    """The settings of one run of `selected` on `root` (jobs from `run_jobs`, window from `read_window`)."""
    target = Target(root, drop_cache=drop_cache)
    zone = target_timezone(target)
    try:
        placed = window.resolve(zone) if window is not None else None
    except WindowError as error:
        raise UsageError(f"--window: {error}") from None
    context = Context(
        jobs=jobs or default_jobs(),
        io_depth=io_depth or Context.io_depth,
        window=placed,
        timezone=zone,
        progress=progress or Progress(),
    )
    return RunSettings(target, selected, context)
