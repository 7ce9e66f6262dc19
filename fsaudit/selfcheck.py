"""`fsaudit self-check PATH...`: the checks that fit a customer's unprivileged use, on their paths."""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

from fsaudit.checker import Option
from fsaudit.registry import Entry

# The report a customer gets when they name no format: HTML when the renderer is there.
DEFAULT_FORMATS = ("html", "text")
DEFAULT_REPORT = "fsaudit-self-check.{extension}"


def _self_checkers(entries: Dict[str, Entry]):
    for name, entry in entries.items():
        checker = entry.checker
        if checker is not None and checker.self_check:
            yield name, checker


def self_check_options(entries: Dict[str, Entry], paths: List[str], raw: Dict[str, Dict[str, list]]) -> tuple:
    """(checker names, raw options) for a self-check of `paths`: every checker marked `self_check`,
    each with a `paths` option pointed at the customer's paths (options given explicitly win)."""
    absolute = [os.path.abspath(path) for path in paths]
    names = []
    options = {name: dict(values) for name, values in raw.items()}
    for name, checker in _self_checkers(entries):
        names.append(name)
        if any(option.name == "paths" for option in checker.options):
            options.setdefault(name, {}).setdefault("paths", absolute)
    return names, options


def flagged_options(entries: Dict[str, Entry]) -> Dict[str, Tuple[str, Option]]:
    """The options self-check offers as flags (`--baseline FILE`), as the checkers declare them:
    flag -> (checker name, option). The first checker to claim a flag keeps it."""
    flags: Dict[str, Tuple[str, Option]] = {}
    for name, checker in _self_checkers(entries):
        for option in checker.options:
            if option.flag and option.flag.startswith("--"):
                flags.setdefault(option.flag, (name, option))
    return flags
