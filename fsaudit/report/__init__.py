"""Renderers: each takes a Report and returns text; none knows about any checker."""

from __future__ import annotations

from typing import Callable, Dict

from fsaudit.errors import FsauditError
from fsaudit.model import Report
from fsaudit.report.html import render_html, require_jinja2
from fsaudit.report.nagios import render_nagios
from fsaudit.report.prometheus import render_prometheus
from fsaudit.report.text import render_text


def render_json(report: Report, colour: bool = False) -> str:
    return report.to_json()


RENDERERS: Dict[str, Callable[..., str]] = {
    "text": render_text,
    "json": render_json,
    "html": render_html,
    "nagios": render_nagios,
    "prometheus": render_prometheus,
}


# Formats that need an optional module, and the function that fails with its install hint.
_REQUIREMENTS: Dict[str, Callable[[], object]] = {"html": require_jinja2}


def check_format(fmt: str) -> None:
    """Fail now, not after an hour-long audit, when `fmt` cannot be rendered here."""
    requirement = _REQUIREMENTS.get(fmt)
    if requirement is not None:
        requirement()


def format_available(fmt: str) -> bool:
    """Whether `fmt` can be rendered here (its optional module is installed)."""
    try:
        check_format(fmt)
    except FsauditError:
        return False
    return fmt in RENDERERS


def render(report: Report, fmt: str, colour: bool = False) -> str:
    return RENDERERS[fmt](report, colour=colour)
