"""What the ldap helpers report, as plain data (fsaudit.problems: a `Problem` found, a `Count` or a
`Stat` for the check's stats, an `Incomplete` reason). Only the checker (`ldap/__init__.py`) makes
Findings, with `Checker.report`."""

from __future__ import annotations

from typing import Dict

from fsaudit.problems import Count, Incomplete, Item, Problem, Stat

__all__ = ["Count", "Incomplete", "Item", "Problem", "Stat", "counts"]


def counts(tally: Dict[str, int]):
    """Count items for a tally kept while streaming (cheaper than one item per entry)."""
    return [Count(key, amount) for key, amount in tally.items() if amount]
