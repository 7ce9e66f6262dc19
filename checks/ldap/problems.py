"""What the ldap helpers report, as plain data: a `Problem` found, a `Count` or a `Stat` for the
check's stats, an `Incomplete` reason. Only the checker (`ldap/__init__.py`) makes Findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union


@dataclass
class Problem:
    """Something found: a Finding but for the checker's name."""

    code: str
    severity: str
    message: str
    subject: Optional[str] = None
    details: Dict[str, Any] = field(default_factory=dict)
    advice: str = ""


@dataclass
class Count:
    """An amount to add to one of the check's stats."""

    key: str
    amount: int = 1


@dataclass
class Stat:
    """A stat that is a sentence (how slapcat was run, or why not)."""

    key: str
    value: str


@dataclass
class Incomplete:
    """Why the check could not verify everything."""

    reason: str


Item = Union[Problem, Count, Stat, Incomplete]


def counts(tally: Dict[str, int]):
    """Count items for a tally kept while streaming (cheaper than one item per entry)."""
    return [Count(key, amount) for key, amount in tally.items() if amount]
