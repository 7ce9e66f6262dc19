"""Audit settings from the TOML config file and `--set CHECK.KEY=VALUE`, merged and checked."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

from fsaudit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

DEFAULT_CONFIG = "/etc/fsaudit/fsaudit.toml"
AUDIT_KEYS = {"window", "check", "skip", "jobs", "drop_cache"}

# checker name -> option name -> the raw values given, in order
RawOptions = Dict[str, Dict[str, List[Any]]]


def load_config(path: str | None) -> Dict[str, Any]:
    """The config file's content: `path`, else the system-wide file when it exists, else nothing."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return {}
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise UsageError(f"cannot read the config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"the config file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"audit", "checks"})
    if unknown:
        raise UsageError(f"{path}: unknown section [{unknown[0]}] (expected [audit] and [checks.NAME])")
    audit = data.get("audit", {})
    bad = sorted(set(audit) - AUDIT_KEYS)
    if bad:
        raise UsageError(f"{path}: unknown key {bad[0]!r} in [audit] (keys: {', '.join(sorted(AUDIT_KEYS))})")
    checks = data.get("checks", {})
    if not isinstance(checks, dict) or not all(isinstance(v, dict) for v in checks.values()):
        raise UsageError(f"{path}: [checks] must hold one table per checker, e.g. [checks.postgres]")
    return data


def parse_sets(items: List[str]) -> RawOptions:
    """`--set CHECK.KEY=VALUE` items as raw options."""
    options: RawOptions = {}
    for item in items:
        name, sep, value = item.partition("=")
        check, dot, key = name.partition(".")
        if not sep or not dot or not check or not key:
            raise UsageError(f"--set {item!r}: expected CHECK.KEY=VALUE, e.g. --set postgres.full_read=true")
        options.setdefault(check.strip(), {}).setdefault(key.strip(), []).append(value)
    return options


def merge_options(config: Dict[str, Any], sets: RawOptions) -> RawOptions:
    """Options per checker: the config file's, then the command line's (which win)."""
    merged: RawOptions = {}
    for check, table in config.get("checks", {}).items():
        for key, value in table.items():
            merged.setdefault(check, {})[key] = [value]
    for check, table in sets.items():
        for key, values in table.items():
            merged.setdefault(check, {})[key] = list(values)
    return merged
