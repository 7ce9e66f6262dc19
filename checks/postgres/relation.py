"""A relation (table, index, sequence, TOAST table) as the checks name it, and the advice for each kind of
damage to one: what a database administrator runs, in the words of PostgreSQL's own commands."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

ADVICE = {
    "index-corrupt": "Rebuild the index: REINDEX INDEX CONCURRENTLY {name};",
    "index-heap-mismatch": (
        "The table {table} and its index {name} disagree: lost writes may have put rows of the table back "
        "to an older version, or the index lost entries. Compare the table with a backup first; then "
        "REINDEX INDEX CONCURRENTLY {name}; (a rebuild makes the index match the table as it is now)."
    ),
    "table-corrupt": (
        "Restore the table {name} from a backup (or save what is still readable with pg_dump first); "
        "do not run VACUUM FULL on it before."
    ),
    "toast-corrupt": (
        "Values of {name} stored out of line (TOAST) are damaged: restore the affected rows or the table "
        "from a backup."
    ),
    "table-corrupt-sequence": (
        "The sequence {name} is damaged: nextval() may fail or hand out values already used. Restore it from "
        "a backup, or recreate it (DROP SEQUENCE, CREATE SEQUENCE) and set it past the highest value in "
        "use{owner}."
    ),
    "file-missing-table": "The data file of table {name} is gone: restore the table from a backup.",
    "file-missing-index": "The file of index {name} is gone: REINDEX INDEX {name}; rebuilds it.",
    "file-missing-sequence": (
        "The file of sequence {name} is gone: nextval() fails. Recreate it (DROP SEQUENCE, CREATE SEQUENCE) "
        "and set it past the highest value in use{owner}, or restore it from a backup."
    ),
    "file-missing-other": (
        "A file the server needs ({file}) is gone: stop the server, copy the data directory aside, and "
        "restore the cluster from a backup."
    ),
    "file-short-table": (
        "Rows at the end of table {name} are gone with the missing blocks: restore the table from a backup."
    ),
    "file-short-index": "The index {name} lost blocks: REINDEX INDEX CONCURRENTLY {name};",
    "file-short-sequence": (
        "The file of sequence {name} lost its page: recreate the sequence and set it past the highest "
        "value in use{owner}, or restore it from a backup."
    ),
    "garbage-xid": (
        "Rows of {name} name transactions that never existed in this cluster: their headers are damaged. "
        "Restore the table from a backup (or save what is still readable with pg_dump first); do not run "
        "VACUUM on it before."
    ),
    "commit-log-damaged": (
        "The commit log lost the outcome of these transactions: the rows they wrote are invisible (and rows "
        "they deleted are back) in {tables}. Stop the server and copy the data directory aside before "
        "anything else; do not VACUUM those tables (it would remove the hidden rows for good). Restore "
        "from a backup, or have an expert mark the transactions committed again in {file}."
    ),
    "rows-lost": (
        "Rows of {name} may have vanished (for example a zeroed transaction-status file in pg_xact). "
        "Copy the data directory aside, compare the table with a backup, and do not VACUUM it until then "
        "(VACUUM would discard hidden rows for good)."
    ),
}


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    kind: str
    pages: int
    tuples: float
    shared: bool
    persistence: str
    filepath: Optional[str]
    size: Optional[int]
    access_method: Optional[str]
    usable: bool
    owner_name: Optional[str]
    owner_schema: Optional[str]
    live_tuples: Optional[int]
    toast_oid: Optional[int] = None
    unique: bool = False
    frozenxid: Optional[int] = None
    # A sequence's owning column (quoted), its table being the owner; for the advice.
    owner_column: Optional[str] = None

    @property
    def qualified(self) -> str:
        return f"{_ident(self.schema)}.{_ident(self.name)}"

    @property
    def owner_qualified(self) -> str:
        if self.owner_name is None:
            return self.qualified
        return f"{_ident(self.owner_schema or '')}.{_ident(self.owner_name)}"

    @property
    def is_index(self) -> bool:
        return self.kind == "i"

    @property
    def family(self) -> str:
        """Which advice fits: "index", "sequence" or "table" (tables, TOAST, materialized views)."""
        return {"i": "index", "S": "sequence"}.get(self.kind, "table")

    @property
    def word(self) -> str:
        return {
            "r": "table",
            "i": "index",
            "t": "TOAST table",
            "m": "materialized view",
            "S": "sequence",
        }.get(self.kind, "relation")

    def advice(self, key: str) -> str:
        """ADVICE[`key`-family] (or ADVICE[`key`]) for this relation."""
        family = f"{key}-{self.family}"
        text = ADVICE.get(family) or ADVICE[key]
        name = self.qualified if self.family != "table" else self.owner_qualified
        owner = ""
        if self.owner_column and self.owner_name:
            literal = self.qualified.replace("'", "''")
            owner = f" (SELECT setval('{literal}', max({self.owner_column})) FROM {self.owner_qualified};)"
        return text.format(name=name, table=self.owner_qualified, owner=owner)


def _ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'
