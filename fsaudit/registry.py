"""Finds the plug-ins, built-in and third-party alike, through entry points: checkers
(`fsaudit.checks`), renderers (`fsaudit.renderers`) and commands that checker packages add
(`fsaudit.commands`). fsaudit's own are declared in setup.cfg exactly like an add-on's."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Tuple, Type

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


# importlib.metadata's reading of an entry point's value: "module.path:attribute.path [extras]".
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


class EntryPoint(NamedTuple):
    """One entry point of a distribution's entry_points.txt, loaded as importlib.metadata loads it."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"{self.value!r} is not a module:attribute")
        loaded = importlib.import_module(match.group("module"))
        for attribute in filter(None, (match.group("attr") or "").split(".")):
            loaded = getattr(loaded, attribute)
        return loaded


@functools.lru_cache(maxsize=1)
def _registered() -> Dict[str, Tuple[Registered, ...]]:
    """Every plug-in per group, for every installed distribution: read once per process, and per
    distribution because Python 3.9's entry points do not know their distribution."""
    found: Dict[str, List[Registered]] = {group: [] for group in GROUPS}
    for points, name, version in _find_distributions():
        for point in points:  # fsaudit's groups only
            found[point.group].append(Registered(point, name, version))
    return {group: tuple(items) for group, items in found.items()}


def _find_distributions() -> Iterator[Tuple[List[EntryPoint], str, str]]:
    """What every finder on sys.meta_path knows, in its order, as importlib.metadata asks them: the
    standard path finder's (read here), and any other's that serves distributions (the fleet's
    in-memory zip) through importlib.metadata."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is PathFinder:
            yield from _scan_path()
        elif hasattr(finder, "find_distributions"):
            from importlib import metadata

            yield from _describe(finder.find_distributions(metadata.DistributionFinder.Context()))


def _scan_path() -> Iterator[Tuple[List[EntryPoint], str, str]]:
    """(entry points, name, version) of every distribution on sys.path that registers any, in path
    order as importlib.metadata finds them. A directory's *.dist-info and *.egg-info are read here:
    importing importlib.metadata (email, zipfile, csv, ...) and its scan took 20 ms of every
    command's start, a third of an audit of an empty root. Any other path entry (the fleet's
    zipapp) is left to importlib.metadata."""
    for entry in sys.path:
        directory = entry or "."
        try:
            names = sorted(os.listdir(directory))
        except NotADirectoryError:
            yield from _scan_with_importlib(entry)
            continue
        except OSError:  # gone, or not ours to list: importlib.metadata finds nothing there either
            continue
        egg = directory.lower().endswith(".egg")  # an egg on the path: its EGG-INFO describes it
        for name in names:
            lowered = name.lower()
            if not (lowered.endswith((".dist-info", ".egg-info")) or (egg and lowered == "egg-info")):
                continue
            base = os.path.join(directory, name)
            text = _read_text(os.path.join(base, "entry_points.txt"))
            points = _entry_points(text) if text else []
            if not points:
                continue
            meta = _read_text(
                os.path.join(base, "METADATA" if lowered.endswith(".dist-info") else "PKG-INFO"), 1 << 16
            )
            yield points, _header_value(meta, "Name"), _header_value(meta, "Version")


def _scan_with_importlib(entry: str) -> Iterator[Tuple[List[EntryPoint], str, str]]:
    from importlib import metadata

    yield from _describe(
        metadata.MetadataPathFinder.find_distributions(metadata.DistributionFinder.Context(path=[entry]))
    )


def _describe(distributions) -> Iterator[Tuple[List[EntryPoint], str, str]]:
    for dist in distributions:
        points = [EntryPoint(p.name, p.value, p.group) for p in dist.entry_points if p.group in GROUPS]
        if points:
            meta = dist.metadata
            yield points, (meta["Name"] if meta else None) or "", (meta["Version"] if meta else None) or ""


def _read_text(path: str, limit: int = -1) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return ""


def _entry_points(text: str) -> List[EntryPoint]:
    """The entry points of an entry_points.txt ("[group]", then "name = value" lines), in fsaudit's
    groups; a line that is no entry point is skipped."""
    points: List[EntryPoint] = []
    group = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        name, equals, value = line.partition("=")
        if group in GROUPS and equals and name.strip():
            points.append(EntryPoint(name.strip(), value.strip(), group))
    return points


def _header_value(text: str, key: str) -> str:
    """The value of a metadata header (`Name`, `Version`) in the header block, "" without one. The
    headers come before the description, which can be long: only they are split into lines."""
    prefix = key.lower() + ":"
    for line in text.partition("\n\n")[0].splitlines():
        if not line.strip():
            break
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip()
    return ""


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
