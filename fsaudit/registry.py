"""Finds checkers: the built-ins and third-party ones, both through the `fsaudit.checks` entry points."""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Dict, Tuple, Type

from fsaudit.checker import Checker

LOG = logging.getLogger(__name__)
GROUP = "fsaudit.checks"


class Entry:
    """One registered checker. Its module is imported the first time `checker` is asked for, so an
    audit of one checker does not pay for importing all of them; a module that fails to import
    leaves `checker` None and says why in `error`."""

    def __init__(self, name: str, origin: str, point=None):
        self.name = name
        self.origin = origin
        self._point = point
        self._checker: Type[Checker] | None = None
        self._error = ""

    @property
    def checker(self) -> Type[Checker] | None:
        if self._point is not None:
            point, self._point = self._point, None
            self._checker, self._error = _load(point)
        return self._checker

    @property
    def error(self) -> str:
        return self._error if self.checker is None else ""


def _load(point) -> Tuple[Type[Checker] | None, str]:
    try:
        loaded = point.load()
    except Exception as error:  # a broken plug-in must not stop the audit
        LOG.debug("cannot load checker %s", point.name, exc_info=True)
        return None, f"cannot load {point.value}: {type(error).__name__}: {error}"
    if isinstance(loaded, type) and issubclass(loaded, Checker):
        return loaded, ""
    return None, f"{point.value} is not a Checker subclass"


def _entry_points():
    """(entry point, its distribution) for every checker registered in GROUP. Read per distribution
    because Python 3.9's entry points do not know their distribution."""
    for dist in metadata.distributions():
        for point in dist.entry_points:
            if point.group == GROUP:
                yield point, dist


def load_checkers() -> Dict[str, Entry]:
    """Every checker registered in the `fsaudit.checks` entry-point group, by name (each imported
    when first used). A checker whose module fails to import is kept with the error, so
    `fsaudit checks` and the report can say so instead of silently dropping it."""
    entries: Dict[str, Entry] = {}
    origins: Dict[object, str] = {}  # a distribution's metadata is parsed once, not once per checker
    for point, dist in _entry_points():
        if point.name in entries:
            continue
        if dist not in origins:
            meta = dist.metadata
            name = meta["Name"] if meta else None
            origins[dist] = f"{name} {meta['Version']}" if name else ""
        entries[point.name] = Entry(point.name, origins[dist] or point.value, point)
    return dict(sorted(entries.items()))
