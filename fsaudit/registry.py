"""Finds the plug-ins, built-in and third-party alike, through entry points: checkers
(`fsaudit.checks`), renderers (`fsaudit.renderers`) and commands that checker packages add
(`fsaudit.commands`). fsaudit's own are declared in setup.cfg exactly like an add-on's."""

from __future__ import annotations

import functools
import logging
from importlib import metadata
from typing import Any, Callable, Dict, List, NamedTuple, Tuple, Type

from fsaudit.checker import Checker

LOG = logging.getLogger(__name__)
CHECKERS = "fsaudit.checks"
RENDERERS = "fsaudit.renderers"
COMMANDS = "fsaudit.commands"
GROUPS = (CHECKERS, RENDERERS, COMMANDS)


class Plugin:
    """One registered plug-in. Its module is imported the first time `loaded` is asked for, so an audit
    of one checker does not pay for importing all of them; a module that fails to import, or an object
    that `accept` refuses, leaves `loaded` None and says why in `error`."""

    def __init__(self, name: str, origin: str, point=None, accept: Callable[[Any], str] | None = None):
        self.name = name
        self.origin = origin
        self._point = point
        self._accept = accept
        self._loaded: Any = None
        self._error = ""

    @property
    def loaded(self) -> Any:
        if self._point is not None:
            point, self._point = self._point, None
            self._loaded, self._error = _load(point, self._accept)
        return self._loaded

    @property
    def error(self) -> str:
        return self._error if self.loaded is None else ""


class Entry(Plugin):
    """One registered checker (`checker` is its class, imported when first asked for)."""

    def __init__(self, name: str, origin: str, point=None):
        super().__init__(name, origin, point, _checker_problem)

    @property
    def checker(self) -> Type[Checker] | None:
        return self.loaded


def _checker_problem(loaded: Any) -> str:
    if isinstance(loaded, type) and issubclass(loaded, Checker):
        return ""
    return "is not a Checker subclass"


def _load(point, accept: Callable[[Any], str] | None) -> Tuple[Any, str]:
    try:
        loaded = point.load()
    except Exception as error:  # a broken plug-in must not stop the audit
        LOG.debug("cannot load %s %s", point.group, point.name, exc_info=True)
        return None, f"cannot load {point.value}: {type(error).__name__}: {error}"
    problem = accept(loaded) if accept else ""
    if problem:
        return None, f"{point.value} {problem}"
    return loaded, ""


class Registered(NamedTuple):
    """One entry point and the distribution that registers it."""

    point: Any
    distribution: str  # "" when its metadata has no name
    version: str

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}" if self.distribution else self.point.value


@functools.lru_cache(maxsize=1)
def _registered() -> Dict[str, Tuple[Registered, ...]]:
    """Every plug-in per group, for every installed distribution: read once per process (the scan of
    site-packages is the slow part), and per distribution because Python 3.9's entry points do not
    know their distribution."""
    found: Dict[str, List[Registered]] = {group: [] for group in GROUPS}
    for dist in metadata.distributions():
        points = [point for point in dist.entry_points if point.group in found]
        if not points:
            continue
        meta = dist.metadata
        name = (meta["Name"] if meta else None) or ""
        version = (meta["Version"] if meta else None) or ""
        for point in points:
            found[point.group].append(Registered(point, name, version))
    return {group: tuple(items) for group, items in found.items()}


def registered(group: str) -> Tuple[Registered, ...]:
    """Every entry point registered in `group`, with its distribution."""
    return _registered().get(group, ())


def _by_name(group: str, make: Callable[[Registered], Plugin]) -> Dict[str, Any]:
    """The plug-ins of `group` by name, sorted; the first distribution to register a name wins."""
    plugins: Dict[str, Plugin] = {}
    for item in registered(group):
        if item.point.name not in plugins:
            plugins[item.point.name] = make(item)
    return dict(sorted(plugins.items()))


def load_plugins(group: str, accept: Callable[[Any], str] | None = None) -> Dict[str, Plugin]:
    """Every plug-in of `group` by name (each imported when first used)."""
    return _by_name(group, lambda item: Plugin(item.point.name, item.origin, item.point, accept))


def load_checkers() -> Dict[str, Entry]:
    """Every checker registered in the `fsaudit.checks` entry-point group, by name (each imported
    when first used). A checker whose module fails to import is kept with the error, so
    `fsaudit checks` and the report can say so instead of silently dropping it."""
    return _by_name(CHECKERS, lambda item: Entry(item.point.name, item.origin, item.point))
