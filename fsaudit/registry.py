"""Finds checkers: the built-ins and third-party ones, both through the `fsaudit.checks` entry points."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, Type

from fsaudit.checker import Checker

LOG = logging.getLogger(__name__)
GROUP = "fsaudit.checks"


@dataclass
class Entry:
    """One registered checker: its class, or why it could not be loaded."""

    name: str
    origin: str
    checker: Type[Checker] | None = None
    error: str = ""


def _entry_points():
    if sys.version_info >= (3, 10):
        return metadata.entry_points(group=GROUP)
    return metadata.entry_points().get(GROUP, [])  # pragma: no cover - Python 3.9


def load_checkers() -> Dict[str, Entry]:
    """Every checker registered in the `fsaudit.checks` entry-point group, by name.

    A checker whose module fails to import is kept with the error, so `fsaudit checks` and the
    report can say so instead of silently dropping it.
    """
    entries: Dict[str, Entry] = {}
    for point in _entry_points():
        if point.name in entries:
            continue
        dist = getattr(point, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else point.value
        entry = Entry(name=point.name, origin=origin)
        try:
            loaded = point.load()
        except Exception as error:  # a broken plug-in must not stop the audit
            LOG.debug("cannot load checker %s", point.name, exc_info=True)
            entry.error = f"cannot load {point.value}: {type(error).__name__}: {error}"
        else:
            if isinstance(loaded, type) and issubclass(loaded, Checker):
                entry.checker = loaded
            else:
                entry.error = f"{point.value} is not a Checker subclass"
        entries[point.name] = entry
    return dict(sorted(entries.items()))
