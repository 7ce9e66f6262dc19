"""What the postgres helpers report, as plain data (fsaudit.problems: a `Problem` found, a `Count` for
the stats, an `Incomplete` reason). Only the checker (`postgres/__init__.py`) turns them into Findings.

They are JSON-safe, one per line (`encode`, `decode`), so that the same helpers run in the audit
process (a DSN) or in a child process that dropped privileges to the cluster's owner.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Optional, Union

from fsaudit.problems import Count, Incomplete, Problem

Item = Union[Problem, Count, Incomplete]


@dataclass
class Place:
    """Where the problems of one cluster are: its label, and its data directory when it runs here."""

    cluster: str
    data_dir: Optional[str] = None

    def file_path(self, filepath: Optional[str]) -> Optional[str]:
        """The path on the audited system of a file named relative to the data directory."""
        if not self.data_dir or not filepath:
            return None
        return filepath if filepath.startswith("/") else f"{self.data_dir.rstrip('/')}/{filepath}"


def at(place: Place, code: str, severity: str, message: str, details=None, **fields) -> Problem:
    """A problem of the cluster at `place`: its details name the cluster first."""
    return Problem(code, severity, message, details={"cluster": place.cluster, **(details or {})}, **fields)


def encode(item: Item) -> str:
    """One JSON line for `item`."""
    if isinstance(item, Problem):
        return json.dumps({"problem": asdict(item)})
    if isinstance(item, Count):
        return json.dumps({"count": [item.key, item.amount]})
    return json.dumps({"incomplete": item.reason})


def decode(line: str) -> Item:
    """The item of one line written by `encode`; ValueError when it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not an item")
    if "problem" in data:
        return Problem(**data["problem"])
    if "count" in data:
        key, amount = data["count"]
        return Count(str(key), int(amount))
    if "incomplete" in data:
        return Incomplete(str(data["incomplete"]))
    raise ValueError("not an item")
