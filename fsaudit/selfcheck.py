"""`fsaudit self-check PATH...`: the checks that fit a customer's unprivileged use, on their paths."""

from __future__ import annotations

import os
from typing import Dict, List

from fsaudit.registry import Entry

# The report a customer gets when they name no format: HTML when the renderer is there.
DEFAULT_FORMATS = ("html", "text")
DEFAULT_REPORT = "fsaudit-self-check.{extension}"


def self_check_options(entries: Dict[str, Entry], paths: List[str], raw: Dict[str, Dict[str, list]]) -> tuple:
    """(checker names, raw options) for a self-check of `paths`: every checker marked `self_check`,
    each with a `paths` option pointed at the customer's paths (options given explicitly win)."""
    absolute = [os.path.abspath(path) for path in paths]
    names = []
    options = {name: dict(values) for name, values in raw.items()}
    for name, entry in entries.items():
        checker = entry.checker
        if checker is None or not checker.self_check:
            continue
        names.append(name)
        if any(option.name == "paths" for option in checker.options):
            options.setdefault(name, {}).setdefault("paths", absolute)
    return names, options
