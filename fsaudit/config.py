"""Audit settings from the TOML config file and `--set CHECK.KEY=VALUE`, merged and checked."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Dict, List

from fsaudit.errors import UsageError

DEFAULT_CONFIG = "/etc/fsaudit/fsaudit.toml"
AUDIT_KEYS = {"window", "check", "skip", "jobs", "io_depth", "drop_cache"}

# checker name -> option name -> the raw values given, in order
RawOptions = Dict[str, Dict[str, List[Any]]]

# A secret inside a value: a libpq keyword (`... password=...`, `sslpassword=`), a URI query parameter
# (`postgresql://h/db?password=...`), or the password of a URL's user information
# (`ldap://user:secret@host`, `postgresql://user:secret@host/db`).
_SECRET_IN_VALUE = re.compile(
    r"(?:^|[\s?&;])(?:ssl)?password\s*=|[a-z][a-z0-9+.-]*://[^/?#@\s]*:[^/?#@\s]*@", re.IGNORECASE
)


def load_config(path: str | None) -> Dict[str, Any]:
    """The config file's content: `path`, else the system-wide file when it exists, else nothing."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return {}
        path = DEFAULT_CONFIG
    # Imported here: most audits have no config file, and the parser took 2 ms of every start.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
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
        refuse_secret(check.strip(), key.strip(), value)
        options.setdefault(check.strip(), {}).setdefault(key.strip(), []).append(value)
    return options


def refuse_secret(check: str, key: str, value: str) -> None:
    """Refuse a password given on the command line: every user of the machine reads it in `ps` (and
    shells keep it in their history). The message says where to put it instead and never repeats it."""
    named = key.lower().endswith(("password", "passwd"))
    if not named and not _SECRET_IN_VALUE.search(value):
        return
    what = f"--set {check}.{key}" + ("" if named else ": the value holds a password, and it")
    raise UsageError(
        f"{what} would show the password to every user of this machine (ps, shell history). "
        f"Put it in a file only you can read and name that file with {check}.password_file, or keep "
        "the whole value in the config file (--config, readable only by you), or leave the password "
        "to the client's own password file or environment (~/.pgpass, PGPASSWORD); remove it from "
        "the command line."
    )


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
