"""Renderers: each takes a Report and returns text; none knows about any checker.

A renderer is a function `render(report, colour=False) -> str` registered in the `fsaudit.renderers`
entry-point group under its format's name, as flake8 loads its formatters (`flake8.report`); fsaudit's
own are declared in setup.cfg exactly like an add-on's. A renderer that needs an optional module
carries `require`, a function that raises FsauditError with the install hint when it is missing, so an
audit fails before it starts, not after an hour, when its format cannot be made.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from fsaudit.errors import FsauditError
from fsaudit.model import Report
from fsaudit.registry import RENDERERS as GROUP
from fsaudit.registry import load_plugins


def render_json(report: Report, colour: bool = False) -> str:
    return report.to_json()


def _renderer_problem(loaded: Any) -> str:
    return "" if callable(loaded) else "is not a function"


class _Lazy:
    """A registered renderer, imported the first time a report is rendered in its format."""

    def __init__(self, plugin):
        self.plugin = plugin

    @property
    def function(self) -> Callable[..., str]:
        function = self.plugin.loaded
        if function is None:
            raise FsauditError(f"the {self.plugin.name} renderer cannot be used: {self.plugin.error}")
        return function

    def __call__(self, report: Report, colour: bool = False) -> str:
        return self.function(report, colour=colour)


# Format name -> renderer. A plain dict: a test or an embedding program may put its own in.
RENDERERS: Dict[str, Callable[..., str]] = {
    name: _Lazy(plugin) for name, plugin in load_plugins(GROUP, _renderer_problem).items()
}


def check_format(fmt: str) -> None:
    """Fail now, not after an hour-long audit, when `fmt` cannot be rendered here."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise FsauditError(f"no renderer for the format {fmt!r} (formats: {', '.join(sorted(RENDERERS))})")
    function = renderer.function if isinstance(renderer, _Lazy) else renderer
    requirement = getattr(function, "require", None)
    if requirement is not None:
        requirement()


def format_available(fmt: str) -> bool:
    """Whether `fmt` can be rendered here (its renderer loads and its optional module is installed)."""
    try:
        check_format(fmt)
    except FsauditError:
        return False
    return True


def render(report: Report, fmt: str, colour: bool = False) -> str:
    return RENDERERS[fmt](report, colour=colour)
