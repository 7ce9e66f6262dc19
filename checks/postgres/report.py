"""What one database's checks found, as findings: corruption by relation, permissions, timeouts.

`DatabaseReport` turns server errors and amcheck results into plain problems (`problems`);
`DatabaseAudit` (in `database`) runs the checks on top of it.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Dict, List, Optional, Tuple

import psycopg

from fsaudit_checks.postgres.commitlog import NamedFile, named_file, refused_for_damage, xid_in_message
from fsaudit_checks.postgres.problems import Count, Incomplete, Item, Place, at
from fsaudit_checks.postgres.relation import ADVICE, Relation
from fsaudit_checks.postgres.session import (
    ServerWatch,
    connect,
    error_kind,
    server_detail,
    server_message,
)

MAX_PROBLEMS_LISTED = 20
MAX_NAMES_LISTED = 20
MAX_RECONNECTS = 3


class DatabaseLost(Exception):
    """The session died and could not be re-opened."""


class ServerRestarted(DatabaseLost):
    """The server restarted during the audit (every session was dropped): the cluster's audit stops."""


class DatabaseReport:
    """The findings of one database's checks, on one or more connections (one per thread); one
    relation's error never stops the rest.

    Findings are held back and emitted together, sorted, when the database is done (`flush`), so the
    report does not depend on which connection finished first. When two checks find the same thing
    (one key, e.g. a table's damage seen by `verify_heapam` and again by a row count), the finding of
    the earlier *phase* is kept, the one the checks in their sequential order would have kept.
    """

    def __init__(
        self,
        place: Place,
        conninfo: str,
        dbname: str,
        settings: Dict[str, Any],
        shared: bool,
        watch: Optional[ServerWatch] = None,
    ):
        self.place = place
        self.conninfo = conninfo
        self.dbname = dbname
        self.settings = settings
        self.include_shared = shared
        self.watch = watch or ServerWatch(None)
        self.local = threading.local()  # this thread's connection, reconnects and phase
        self.lock = threading.RLock()
        self.denied: Dict[str, List[str]] = {}
        self.reported: set = set()
        self.by_path: Dict[str, Relation] = {}
        self.by_name: Dict[Tuple[str, str], Relation] = {}
        self.block_size = 8192
        self.file_candidates: set = set()
        self.held: List[dict] = []
        self.keyed: Dict[tuple, Tuple[tuple, dict]] = {}
        self.incomplete_reasons: List[str] = []
        self.counts: Dict[str, int] = {}

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

    def count(self, key: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + amount

    def flush(self) -> List[Item]:
        """The held findings as problems sorted by subject, code and message, then the counts and
        the incompleteness; what was held is cleared."""
        with self.lock:
            found = self.held + [finding for _, finding in self.keyed.values()]
            self.held, self.keyed = [], {}
            reasons, self.incomplete_reasons = self.incomplete_reasons, []
            counts, self.counts = self.counts, {}
        found.sort(key=_finding_order)
        items: List[Item] = [at(self.place, **finding) for finding in found]
        items += [Count(key, amount) for key, amount in counts.items()]
        items += [Incomplete(reason) for reason in sorted(reasons)]
        return items

    # -- plumbing -------------------------------------------------------------------------------
    def subject(self, rel: Optional[Relation] = None) -> str:
        what = f" {rel.schema}.{rel.name}" if rel else ""
        return f"{self.place.cluster} {self.dbname}{what}"

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
        damage = refused_for_damage(str(error))
        if damage is not None:
            self.refused(damage, error)
            return
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
        self.incomplete(f"database {self.dbname} of {self.place.cluster} was not checked")

    def refused(self, damage: NamedFile, error: BaseException) -> None:
        """The server refuses sessions to this database because a file it needs cannot be read."""
        text = " ".join(str(error).split())
        commit_log = damage.kind == "commit-log"
        self.finding(
            "commit-log-damaged" if commit_log else "file-missing",
            "critical",
            f"the server refuses every session to database {self.dbname}: {damage.path} cannot be read "
            f"({text})",
            subject=f"{self.place.cluster} {damage.path}",
            path=self.place.file_path(damage.path),
            details=self.details(file=damage.path, server_message=text, xid=xid_in_message(text)),
            advice=ADVICE["commit-log-damaged"].format(tables="its tables", file=damage.path)
            if commit_log
            else ADVICE["file-missing-other"].format(file=damage.path),
        )
        self.incomplete(f"database {self.dbname} of {self.place.cluster} was not checked")

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

    def session_died(
        self, error: BaseException, step: str, rel: Optional[Relation], group: Optional[List[Relation]] = None
    ) -> None:
        """Raise ServerRestarted when this thread's session died because the server restarted
        (while reading `rel`, or one relation of `group`)."""
        if not (self.conn.closed or self.conn.broken):
            return
        reading: Dict[str, Any] = {"database": self.dbname, "step": step}
        if group and len(group) == 1:
            rel = group[0]
        if rel is not None:
            reading.update(relation=rel.qualified, kind=rel.word)
        elif group:
            reading["relations"] = [member.qualified for member in group[:MAX_NAMES_LISTED]]
            reading["relation_count"] = len(group)
        if self.watch.session_died(error, reading):
            raise ServerRestarted(server_message(error))

    def failed(self, error: BaseException, step: str, rel: Optional[Relation]) -> None:
        """Report a failed statement by what its error means; reconnect when the session died
        (and stop when the server restarted: reading on could crash it again)."""
        self.session_died(error, step, rel)
        kind = error_kind(error)
        message = server_message(error)
        if kind == "corrupt":
            self.corrupt(error, step, rel)
        elif kind == "permission":
            with self.lock:
                self.denied.setdefault(step, []).append(rel.qualified if rel else self.dbname)
        elif kind == "gone":
            self.count("relations_dropped_during_check")
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
        detail = server_detail(error)
        sqlstate = getattr(error, "sqlstate", None)
        named = named_file(message, detail)
        if named is not None and named.kind == "relation":
            rel = self.by_path.get(named.relation) or (
                rel if rel and rel.filepath == named.relation else None
            )
            if rel is None:
                named = NamedFile(named.path, "other")
        if named is not None and named.kind == "commit-log":
            self.commit_log_error(named, message, detail, step, rel, sqlstate)
            return
        if named is not None and named.kind == "other" and sqlstate == "58P01":
            self.other_file_missing(named, message, detail, step, sqlstate)
            return
        if rel is None:
            self.finding(
                "check-failed",
                "warning",
                f"{step} failed with a data error: {message}",
                subject=self.subject(),
                details=self.details(
                    step=step, server_message=message, server_detail=detail or None, sqlstate=sqlstate
                ),
                advice="Read the server log from the time of the audit; the error names the damaged object.",
            )
            self.incomplete("a data error could not be attributed to a relation")
            return
        if sqlstate == "58P01" or "No such file" in message:
            self.report_missing(rel, message)
            return
        if rel.is_index:
            self.index_corrupt(rel, message, step, sqlstate)
        else:
            self.table_corrupt(rel, [{"message": message}], step, sqlstate)

    def table_of(self, rel: Optional[Relation]) -> Optional[Relation]:
        """The table whose rows `rel` holds: an index's or a TOAST table's owner, else `rel`."""
        if rel is None or rel.owner_name is None or rel.kind == "S":
            return rel
        return self.by_name.get((rel.owner_schema or "", rel.owner_name), rel)

    def commit_log_error(self, named: NamedFile, message, detail, step, rel, sqlstate) -> None:
        """A commit-log segment could not be read for a transaction id of some rows: the segment is
        gone (commit-log damage) when the id is one the cluster knows, else the rows name a
        transaction that never existed (their headers are damaged)."""
        xid = xid_in_message(message)
        table = self.table_of(rel)
        known = self.xid_known(xid, named.multixact) if xid is not None else None
        if known is False and table is not None:
            what = "multixact" if named.multixact else "transaction"
            self.table_corrupt(
                table,
                [
                    {
                        "message": f"rows name {what} {xid}, which this cluster never had (its status "
                        f"would be in {named.path}, which is rightly gone): {message}",
                        "xid": xid,
                    }
                ],
                step,
                sqlstate,
                advice_key="garbage-xid",
            )
            return
        segment = named.path
        if not self.claim(("commit-log-damaged", segment)):
            return
        whose = f"rows of {table.word} {table.qualified}" if table is not None else "rows"
        self.finding(
            "commit-log-damaged",
            "critical",
            f"the commit log file {segment} cannot be read ({detail or message}): the outcome of "
            f"transaction {xid} and of every other one in it is lost, and {whose} written by them "
            "cannot be read",
            subject=f"{self.place.cluster} {segment}",
            path=self.place.file_path(segment),
            details=self.details(
                table,
                step=step,
                segment=segment,
                xid=xid,
                server_message=message,
                server_detail=detail or None,
                sqlstate=sqlstate,
            ),
            advice=ADVICE["commit-log-damaged"].format(
                tables=table.qualified if table is not None else "the tables that read it", file=segment
            ),
            key=("commit-log-damaged", segment),
        )

    def xid_known(self, xid: int, multixact: bool) -> Optional[bool]:
        """Whether `xid` lies between the oldest transaction (or multixact) the cluster keeps and the
        next one; None when the server cannot say."""
        age, oldest = ("mxid_age", "datminmxid") if multixact else ("age", "datfrozenxid")
        try:
            row = self.conn.execute(
                f"SELECT {age}(%s::text::xid), (SELECT max({age}({oldest})) FROM pg_database)", (str(xid),)
            ).fetchone()
        except psycopg.Error:
            return None
        return 0 <= row[0] <= row[1]

    def other_file_missing(self, named: NamedFile, message, detail, step, sqlstate) -> None:
        """A file that is not a relation of this database, nor the commit log, is gone."""
        if not self.claim(("file-missing", named.path)):
            return
        self.finding(
            "file-missing",
            "critical",
            f"a file the server needs is gone: {named.path} ({message})",
            subject=f"{self.place.cluster} {named.path}",
            path=self.place.file_path(named.path),
            details=self.details(
                step=step,
                file=named.path,
                server_message=message,
                server_detail=detail or None,
                sqlstate=sqlstate,
            ),
            advice=ADVICE["file-missing-other"].format(file=named.path),
            key=("file-missing", named.path),
        )

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
            path=self.place.file_path(rel.filepath),
            details=self.details(
                rel, step=step, server_message=message, sqlstate=sqlstate, **_location(message)
            ),
            advice=ADVICE[advice_key].format(name=rel.qualified, table=rel.owner_qualified),
            key=("index-corrupt", rel.oid),
        )

    def table_corrupt(
        self, rel: Relation, problems: List[dict], step: str, sqlstate: Optional[str], advice_key: str = ""
    ) -> None:
        toast = rel.kind == "t" or any("toast" in p.get("message", "").lower() for p in problems)
        code = "toast-corrupt" if toast else "table-corrupt"
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
            path=self.place.file_path(rel.filepath),
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
            advice=rel.advice(advice_key or code),
            key=(code, rel.oid),
        )

    def report_missing(self, rel: Relation, message: str) -> None:
        if not self.claim(("file-missing", rel.oid)):
            return
        self.finding(
            "file-missing",
            "critical",
            f"the file of {rel.word} {rel.qualified} ({rel.filepath}) is gone: {message}",
            subject=self.subject(rel),
            path=self.place.file_path(rel.filepath),
            details=self.details(rel, server_message=message, catalog_pages=rel.pages),
            advice=rel.advice("file-missing"),
            key=("file-missing", rel.oid),
        )

    def report_short(self, rel: Relation) -> None:
        self.claim(("file-short", rel.oid))
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
            path=self.place.file_path(rel.filepath),
            details=self.details(rel, size=rel.size, catalog_pages=rel.pages, expected_size=expected),
            advice=rel.advice("file-short"),
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
