"""What helper modules report, as plain data: a `Problem` found, a `Count` or a `Stat` for the check's
stats, an `Incomplete` reason. Helpers return or yield them; only the checker turns them into
Findings and stats (`Checker.report`), so a helper never needs the checker and can run anywhere (a
child process that dropped privileges, a thread, a unit test)."""

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
    path: Any = None  # str or bytes, inside the audited system
    details: Dict[str, Any] = field(default_factory=dict)
    advice: str = ""


@dataclass
class Count:
    """An amount to add to one of the check's stats."""

    key: str
    amount: int = 1


@dataclass
class Stat:
    """A stat that is not a count (a sentence: how a tool was run, or why not)."""

    key: str
    value: Any


@dataclass
class Incomplete:
    """Why the check could not verify everything."""

    reason: str


Item = Union[Problem, Count, Stat, Incomplete]
