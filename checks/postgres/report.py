"""What one database's checks found, as findings: corruption by relation, permissions, timeouts.

`DatabaseReport` turns server errors and amcheck results into events; `DatabaseAudit` (in
`postgres_database`) runs the checks on top of it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import psycopg

from fsaudit_checks.postgres.session import Events, connect, error_kind, server_message

MAX_PROBLEMS_LISTED = 20
MAX_NAMES_LISTED = 20
MAX_RECONNECTS = 3
_FILE_IN_MESSAGE = re.compile(r'"((?:base/\d+|global|pg_tblspc/[^"]+)/\d+)(?:_[a-z]+)?(?:\.\d+)?"')

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
    "file-missing-table": "The data file of table {name} is gone: restore the table from a backup.",
    "file-missing-index": "The file of index {name} is gone: REINDEX INDEX {name}; rebuilds it.",
    "file-short-table": (
        "Rows at the end of table {name} are gone with the missing blocks: restore the table from a backup."
    ),
    "file-short-index": "The index {name} lost blocks: REINDEX INDEX CONCURRENTLY {name};",
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
    def word(self) -> str:
        return {"r": "table", "i": "index", "t": "TOAST table", "m": "materialized view"}.get(
            self.kind, "relation"
        )


def _ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


class DatabaseLost(Exception):
    """The session died and could not be re-opened."""


class DatabaseReport:
    """The findings of one database's checks, on one or more connections (one per thread); one
    relation's error never stops the rest.

    Findings are held back and emitted together, sorted, when the database is done (`flush`), so the
    report does not depend on which connection finished first. When two checks find the same thing
    (one key, e.g. a table's damage seen by `verify_heapam` and again by a row count), the finding of
    the earlier *phase* is kept, the one the checks in their sequential order would have kept.
    """

    def __init__(self, events: Events, conninfo: str, dbname: str, settings: Dict[str, Any], shared: bool):
        self.events = events
        self.conninfo = conninfo
        self.dbname = dbname
        self.settings = settings
        self.include_shared = shared
        self.local = threading.local()  # this thread's connection, reconnects and phase
        self.lock = threading.RLock()
        self.denied: Dict[str, List[str]] = {}
        self.reported: set = set()
        self.by_path: Dict[str, Relation] = {}
        self.block_size = 8192
        self.file_candidates: set = set()
        self.held: List[dict] = []
        self.keyed: Dict[tuple, Tuple[tuple, dict]] = {}
        self.incomplete_reasons: List[str] = []

    # -- this thread's session ------------------------------------------------------------------
    @property
    def conn(self) -> Optional[psycopg.Connection]:
        return getattr(self.local, "conn", None)

    @conn.setter
    def conn(self, value: Optional[psycopg.Connection]) -> None:
        self.local.conn = value
        self.local.reconnects = 0

    @property
    def rank(self) -> tuple:
        """Where this thread's current step stands in the checks' sequential order: (phase, task)."""
        return getattr(self.local, "rank", (0, 0))

    @rank.setter
    def rank(self, value: tuple) -> None:
        self.local.rank = value

    # -- findings, held back until the database is done -----------------------------------------
    def finding(self, code, severity, message, subject=None, path=None, details=None, advice="", key=None):
        """Hold a finding; with `key`, one finding per key is kept: the one of the earliest rank."""
        finding = dict(
            code=code,
            severity=severity,
            message=message,
            subject=subject,
            path=path,
            details=details,
            advice=advice,
        )
        with self.lock:
            if key is None:
                self.held.append(finding)
                return
            seen = self.keyed.get(key)
            if seen is None or self.rank < seen[0]:
                self.keyed[key] = (self.rank, finding)

    def claim(self, key: tuple) -> bool:
        """Mark `key` reported; False when a step of the same or an earlier rank already reported it
        (the caller then need not build its finding)."""
        with self.lock:
            self.reported.add(key)
            seen = self.keyed.get(key)
            return seen is None or self.rank < seen[0]

    def incomplete(self, reason: str) -> None:
        with self.lock:
            if reason not in self.incomplete_reasons:
                self.incomplete_reasons.append(reason)

    def flush(self) -> None:
        """Emit the held findings sorted by subject, code and message, then the incompleteness."""
        with self.lock:
            found = self.held + [finding for _, finding in self.keyed.values()]
            self.held, self.keyed = [], {}
            reasons, self.incomplete_reasons = self.incomplete_reasons, []
        found.sort(key=_finding_order)
        for finding in found:
            self.events.finding(**finding)
        for reason in sorted(reasons):
            self.events.incomplete(reason)

    # -- plumbing -------------------------------------------------------------------------------
    def subject(self, rel: Optional[Relation] = None) -> str:
        what = f" {rel.schema}.{rel.name}" if rel else ""
        return f"{self.events.cluster} {self.dbname}{what}"

    def details(self, rel: Optional[Relation] = None, **extra) -> dict:
        details: Dict[str, Any] = {"database": self.dbname}
        if rel is not None:
            details.update(schema=rel.schema, relation=rel.name, kind=rel.word, oid=rel.oid)
            if rel.owner_name:
                details["table"] = f"{rel.owner_schema}.{rel.owner_name}"
            if rel.filepath:
                details["file"] = rel.filepath
        details.update({k: v for k, v in extra.items() if v is not None})
        return details

    def what(self, rel: Optional[Relation]) -> str:
        return f"{rel.word} {rel.qualified}" if rel else f"database {self.dbname}"

    def connection_failed(self, error: BaseException) -> None:
        kind = error_kind(error)
        code = (
            "permission-denied"
            if kind == "permission" or "permission denied" in str(error)
            else "connection-failed"
        )
        self.finding(
            code,
            "warning",
            f"cannot connect to database {self.dbname}: {server_message(error)}",
            subject=self.subject(),
            details=self.details(
                server_message=server_message(error), sqlstate=getattr(error, "sqlstate", None)
            ),
            advice="Check the DSN, the password (postgres.password_file or ~/.pgpass) and pg_hba.conf; "
            "as root, give no DSN and fsaudit connects as the cluster's owner.",
        )
        self.incomplete(f"database {self.dbname} of {self.events.cluster} was not checked")

    def query(self, statement, params=None, step: str = "", rel: Optional[Relation] = None) -> Optional[list]:
        """The rows of `statement`, or None after reporting why it failed."""
        try:
            return self.conn.execute(statement, params).fetchall()
        except psycopg.Error as error:
            self.failed(error, step, rel)
            return None

    def reconnect(self) -> bool:
        reconnects = getattr(self.local, "reconnects", 0)
        if reconnects >= MAX_RECONNECTS:
            return False
        try:
            self.conn.close()
            self.conn = connect(self.conninfo, self.dbname, self.settings)
        except psycopg.Error:
            self.local.reconnects = reconnects + 1
            return False
        self.local.reconnects = reconnects + 1
        return True

    def failed(self, error: BaseException, step: str, rel: Optional[Relation]) -> None:
        """Report a failed statement by what its error means; reconnect when the session died."""
        kind = error_kind(error)
        message = server_message(error)
        if kind == "corrupt":
            self.corrupt(error, step, rel)
        elif kind == "permission":
            with self.lock:
                self.denied.setdefault(step, []).append(rel.qualified if rel else self.dbname)
        elif kind == "gone":
            self.events.count("relations_dropped_during_check")
        elif kind == "timeout":
            self.finding(
                "timeout",
                "warning",
                f"{step} of {self.what(rel)} did not finish: {message}",
                subject=self.subject(rel),
                details=self.details(rel, step=step, server_message=message),
                advice="Re-run when the database is less busy, or raise postgres.statement_timeout and "
                "postgres.lock_timeout.",
            )
            self.incomplete("some relations were not checked to the end (timeouts)")
            if rel is not None:
                with self.lock:
                    self.reported.add(("timeout", rel.oid))
        else:
            self.finding(
                "check-failed",
                "warning",
                f"{step} of {self.what(rel)} failed: {message}",
                subject=self.subject(rel),
                details=self.details(
                    rel, step=step, server_message=message, sqlstate=getattr(error, "sqlstate", None)
                ),
                advice="Re-run the audit; if it fails again, read the server log from the time of the audit.",
            )
            self.incomplete("some checks failed before the end")
        if (self.conn.closed or self.conn.broken) and not self.reconnect():
            raise DatabaseLost(message)

    def corrupt(self, error: BaseException, step: str, rel: Optional[Relation]) -> None:
        message = server_message(error)
        match = _FILE_IN_MESSAGE.search(message)
        if match and match.group(1) in self.by_path:
            rel = self.by_path[match.group(1)]
        if rel is None:
            self.finding(
                "check-failed",
                "warning",
                f"{step} failed with a data error: {message}",
                subject=self.subject(),
                details=self.details(
                    step=step, server_message=message, sqlstate=getattr(error, "sqlstate", None)
                ),
                advice="Read the server log from the time of the audit; the error names the damaged object.",
            )
            self.incomplete("a data error could not be attributed to a relation")
            return
        if getattr(error, "sqlstate", "") == "58P01" or "No such file" in message:
            self.report_missing(rel, message)
            return
        if rel.is_index:
            self.index_corrupt(rel, message, step, getattr(error, "sqlstate", None))
        else:
            self.table_corrupt(rel, [{"message": message}], step, getattr(error, "sqlstate", None))

    def index_corrupt(self, rel: Relation, message: str, step: str, sqlstate: Optional[str]) -> None:
        if not self.claim(("index-corrupt", rel.oid)):
            return
        mismatch = "lacks matching index tuple" in message
        advice_key = "index-heap-mismatch" if mismatch else "index-corrupt"
        self.finding(
            "index-corrupt",
            "critical",
            f"index {rel.qualified} is damaged: {message}",
            subject=self.subject(rel),
            path=self.events.file_path(rel.filepath),
            details=self.details(
                rel, step=step, server_message=message, sqlstate=sqlstate, **_location(message)
            ),
            advice=ADVICE[advice_key].format(name=rel.qualified, table=rel.owner_qualified),
            key=("index-corrupt", rel.oid),
        )

    def table_corrupt(self, rel: Relation, problems: List[dict], step: str, sqlstate: Optional[str]) -> None:
        toast = rel.kind == "t" or any("toast" in p.get("message", "").lower() for p in problems)
        code = "toast-corrupt" if toast else "table-corrupt"
        name = rel.owner_qualified if rel.kind == "t" else rel.qualified
        if not self.claim((code, rel.oid)):
            return
        first = problems[0]
        where = ""
        if first.get("block") is not None:
            where = (
                f" (block {first['block']}"
                + (f", offset {first['offset']}" if first.get("offset") else "")
                + ")"
            )
        more = f"; {len(problems)} problems in all" if len(problems) > 1 else ""
        self.finding(
            code,
            "critical",
            f"{rel.word} {rel.qualified} is damaged{where}: {first.get('message', '')}{more}",
            subject=self.subject(rel),
            path=self.events.file_path(rel.filepath),
            details=self.details(
                rel,
                step=step,
                sqlstate=sqlstate,
                problems=problems[:MAX_PROBLEMS_LISTED],
                problem_count=len(problems),
                block=first.get("block"),
                offset=first.get("offset"),
                server_message=first.get("message"),
            ),
            advice=ADVICE[code].format(name=name),
            key=(code, rel.oid),
        )

    def report_missing(self, rel: Relation, message: str) -> None:
        if not self.claim(("file-missing", rel.oid)):
            return
        kind = "index" if rel.is_index else "table"
        self.finding(
            "file-missing",
            "critical",
            f"the file of {rel.word} {rel.qualified} ({rel.filepath}) is gone: {message}",
            subject=self.subject(rel),
            path=self.events.file_path(rel.filepath),
            details=self.details(rel, server_message=message, catalog_pages=rel.pages),
            advice=ADVICE[f"file-missing-{kind}"].format(
                name=rel.qualified if rel.is_index else rel.owner_qualified
            ),
            key=("file-missing", rel.oid),
        )

    def report_short(self, rel: Relation) -> None:
        self.claim(("file-short", rel.oid))
        kind = "index" if rel.is_index else "table"
        expected = rel.pages * self.block_size
        if rel.size % self.block_size:
            what = f"is {rel.size} bytes, not a whole number of {self.block_size}-byte blocks"
        else:
            what = f"has {rel.size // self.block_size} blocks, the catalog says {rel.pages}"
        self.finding(
            "file-short",
            "critical",
            f"the file of {rel.word} {rel.qualified} ({rel.filepath}) {what}",
            subject=self.subject(rel),
            path=self.events.file_path(rel.filepath),
            details=self.details(rel, size=rel.size, catalog_pages=rel.pages, expected_size=expected),
            advice=ADVICE[f"file-short-{kind}"].format(
                name=rel.qualified if rel.is_index else rel.owner_qualified
            ),
            key=("file-short", rel.oid),
        )

    def report_denied(self) -> None:
        for step, names in self.denied.items():
            names = sorted(names)
            self.finding(
                "permission-denied",
                "warning",
                f"permission denied for {step} on {len(names)} object(s) of database {self.dbname}: "
                "they were not checked (this is not damage)",
                subject=self.subject(),
                details=self.details(step=step, objects=names[:MAX_NAMES_LISTED], object_count=len(names)),
                advice="Run the audit as root (it connects as the cluster's owner), as a superuser, or grant "
                "the role pg_read_all_data, pg_read_server_files and EXECUTE on the amcheck functions.",
            )
        if self.denied:
            self.incomplete("some objects were not checked: permission denied")


def _finding_order(finding: dict) -> tuple:
    details = json.dumps(finding["details"], sort_keys=True, default=str)
    return (finding["subject"] or "", finding["code"], finding["message"], details)


def _location(message: str) -> dict:
    """Block and offset named in an amcheck message, e.g. "(block 3, offset 7)" or "heap tuple (0,5)"."""
    found: Dict[str, int] = {}
    match = re.search(r"block (\d+)", message)
    if match:
        found["block"] = int(match.group(1))
    match = re.search(r"offset (\d+)", message)
    if match:
        found["offset"] = int(match.group(1))
    match = re.search(r"tuple \((\d+),(\d+)\)", message)
    if match:
        found.setdefault("heap_block", int(match.group(1)))
        found.setdefault("heap_offset", int(match.group(2)))
    return found
