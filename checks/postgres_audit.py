"""Checking one PostgreSQL cluster, database by database, without writing to it or blocking writers.

Everything here yields *events*, plain JSON-safe dicts, so the same code runs in the audit process
(a DSN) or in a child process that dropped privileges to the cluster's owner (discovery as root):
- `{"finding": {code, severity, message, path, subject, details, advice}}`
- `{"count": [key, amount]}`
- `{"incomplete": reason}`

Safety on a live server: every session is read-only (`default_transaction_read_only`), autocommit
(no long snapshot holds back VACUUM), with `statement_timeout` and `lock_timeout`; the only locks
taken are AccessShareLocks (plain reads, `bt_index_check`, `verify_heapam`), which never block
writers; nothing is created unless `install_amcheck` is set.
"""

from __future__ import annotations

import os
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

Emit = Callable[[dict], None]

MAX_PROBLEMS_LISTED = 20
MAX_NAMES_LISTED = 20
MAX_RECONNECTS = 3
SEGMENT_BYTES = 1 << 30
# Relations smaller than this are checked GROUP_SIZE at a time, in one statement.
SMALL_RELATION_BYTES = 1 << 20
GROUP_SIZE = 50
MAX_SEGMENTS = 1 << 16
_FILE_IN_MESSAGE = re.compile(r'"((?:base/\d+|global|pg_tblspc/[^"]+)/\d+)(?:_[a-z]+)?(?:\.\d+)?"')
_DONE = object()

CATALOG_QUERY = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpages, c.reltuples::float8, c.relisshared,
       c.relpersistence, pg_relation_filepath(c.oid), NULL::bigint, am.amname,
       COALESCE(i.indisvalid AND i.indisready AND i.indislive, true),
       COALESCE(it.relname, tt.relname), COALESCE(itn.nspname, ttn.nspname), s.n_live_tup
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class it ON it.oid = i.indrelid
LEFT JOIN pg_namespace itn ON itn.oid = it.relnamespace
LEFT JOIN pg_class tt ON c.relkind = 't' AND tt.reltoastrelid = c.oid
LEFT JOIN pg_namespace ttn ON ttn.oid = tt.relnamespace
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'i', 't', 'm') AND c.relpersistence <> 't'
ORDER BY c.oid
"""

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


def error_kind(error: BaseException) -> str:
    """What a server error means for the audit: corrupt, permission, timeout, gone, connection, other."""
    state = getattr(error, "sqlstate", None) or ""
    if state == "42501":
        return "permission"
    if state in ("57014", "55P03"):
        return "timeout"
    if state in ("42P01", "3F000", "42704"):
        return "gone"
    if state.startswith("XX") or state.startswith("58"):
        return "corrupt"
    if isinstance(error, psycopg.OperationalError):
        return "connection"
    return "other"


def server_message(error: BaseException) -> str:
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return (primary or str(error) or type(error).__name__).strip()


def connect(conninfo: str, dbname: Optional[str], settings: Dict[str, Any]) -> psycopg.Connection:
    """A read-only, autocommit session with statement and lock timeouts."""
    options = [conninfo_to_dict(conninfo).get("options") or ""]
    options.append("-c default_transaction_read_only=on")
    options.append(f"-c statement_timeout={int(float(settings['statement_timeout']) * 1000)}")
    options.append(f"-c lock_timeout={int(float(settings['lock_timeout']) * 1000)}")
    options.append("-c idle_in_transaction_session_timeout=60000")
    kwargs: Dict[str, Any] = {"options": " ".join(o for o in options if o), "application_name": "fsaudit"}
    kwargs["connect_timeout"] = int(settings.get("connect_timeout") or 10)
    if dbname:
        kwargs["dbname"] = dbname
    if settings.get("password"):
        kwargs["password"] = settings["password"]
    conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
    # Poolers may drop startup options: say it again in the session itself.
    conn.execute("SET default_transaction_read_only = on")
    return conn


class Events:
    """Builds the events of one cluster; `emit` sends each one on (a queue, a pipe)."""

    def __init__(self, emit: Emit, cluster: str, data_dir: Optional[str]):
        self.emit = emit
        self.cluster = cluster
        self.data_dir = data_dir

    def finding(self, code, severity, message, subject=None, path=None, details=None, advice=""):
        details = {"cluster": self.cluster, **(details or {})}
        self.emit(
            {
                "finding": {
                    "code": code,
                    "severity": severity,
                    "message": message,
                    "subject": subject,
                    "path": path,
                    "details": details,
                    "advice": advice,
                }
            }
        )

    def count(self, key: str, amount: int = 1) -> None:
        self.emit({"count": [key, amount]})

    def incomplete(self, reason: str) -> None:
        self.emit({"incomplete": reason})

    def file_path(self, rel: Relation) -> Optional[str]:
        if not self.data_dir or not rel.filepath:
            return None
        return rel.filepath if rel.filepath.startswith("/") else f"{self.data_dir.rstrip('/')}/{rel.filepath}"


class DatabaseAudit:
    """Every check of one database, on one connection; one relation's error never stops the rest."""

    def __init__(self, events: Events, conninfo: str, dbname: str, settings: Dict[str, Any], shared: bool):
        self.events = events
        self.conninfo = conninfo
        self.dbname = dbname
        self.settings = settings
        self.include_shared = shared
        self.conn: Optional[psycopg.Connection] = None
        self.reconnects = 0
        self.denied: Dict[str, List[str]] = {}
        self.reported: set = set()
        self.by_path: Dict[str, Relation] = {}
        self.block_size = 8192
        self.file_candidates: set = set()

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

    def run(self) -> None:
        try:
            self.conn = connect(self.conninfo, self.dbname, self.settings)
        except psycopg.Error as error:
            self.connection_failed(error)
            return
        try:
            self.audit()
        finally:
            self.conn.close()

    def connection_failed(self, error: BaseException) -> None:
        kind = error_kind(error)
        code = (
            "permission-denied"
            if kind == "permission" or "permission denied" in str(error)
            else "connection-failed"
        )
        self.events.finding(
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
        self.events.incomplete(f"database {self.dbname} of {self.events.cluster} was not checked")

    def query(self, statement, params=None, step: str = "", rel: Optional[Relation] = None) -> Optional[list]:
        """The rows of `statement`, or None after reporting why it failed."""
        try:
            return self.conn.execute(statement, params).fetchall()
        except psycopg.Error as error:
            self.failed(error, step, rel)
            return None

    def reconnect(self) -> bool:
        if self.reconnects >= MAX_RECONNECTS:
            return False
        self.reconnects += 1
        try:
            self.conn.close()
            self.conn = connect(self.conninfo, self.dbname, self.settings)
        except psycopg.Error:
            return False
        return True

    def failed(self, error: BaseException, step: str, rel: Optional[Relation]) -> None:
        """Report a failed statement by what its error means; reconnect when the session died."""
        kind = error_kind(error)
        message = server_message(error)
        if kind == "corrupt":
            self.corrupt(error, step, rel)
        elif kind == "permission":
            self.denied.setdefault(step, []).append(rel.qualified if rel else self.dbname)
        elif kind == "gone":
            self.events.count("relations_dropped_during_check")
        elif kind == "timeout":
            self.events.finding(
                "timeout",
                "warning",
                f"{step} of {self.what(rel)} did not finish: {message}",
                subject=self.subject(rel),
                details=self.details(rel, step=step, server_message=message),
                advice="Re-run when the database is less busy, or raise postgres.statement_timeout and "
                "postgres.lock_timeout.",
            )
            self.events.incomplete("some relations were not checked to the end (timeouts)")
            if rel is not None:
                self.reported.add(("timeout", rel.oid))
        else:
            self.events.finding(
                "check-failed",
                "warning",
                f"{step} of {self.what(rel)} failed: {message}",
                subject=self.subject(rel),
                details=self.details(
                    rel, step=step, server_message=message, sqlstate=getattr(error, "sqlstate", None)
                ),
                advice="Re-run the audit; if it fails again, read the server log from the time of the audit.",
            )
            self.events.incomplete("some checks failed before the end")
        if (self.conn.closed or self.conn.broken) and not self.reconnect():
            raise _DatabaseLost(message)

    def corrupt(self, error: BaseException, step: str, rel: Optional[Relation]) -> None:
        message = server_message(error)
        match = _FILE_IN_MESSAGE.search(message)
        if match and match.group(1) in self.by_path:
            rel = self.by_path[match.group(1)]
        if rel is None:
            self.events.finding(
                "check-failed",
                "warning",
                f"{step} failed with a data error: {message}",
                subject=self.subject(),
                details=self.details(
                    step=step, server_message=message, sqlstate=getattr(error, "sqlstate", None)
                ),
                advice="Read the server log from the time of the audit; the error names the damaged object.",
            )
            self.events.incomplete("a data error could not be attributed to a relation")
            return
        if getattr(error, "sqlstate", "") == "58P01" or "No such file" in message:
            self.report_missing(rel, message)
            return
        if rel.is_index:
            self.index_corrupt(rel, message, step, getattr(error, "sqlstate", None))
        else:
            self.table_corrupt(rel, [{"message": message}], step, getattr(error, "sqlstate", None))

    def index_corrupt(self, rel: Relation, message: str, step: str, sqlstate: Optional[str]) -> None:
        if ("index-corrupt", rel.oid) in self.reported:
            return
        self.reported.add(("index-corrupt", rel.oid))
        mismatch = "lacks matching index tuple" in message
        advice_key = "index-heap-mismatch" if mismatch else "index-corrupt"
        self.events.finding(
            "index-corrupt",
            "critical",
            f"index {rel.qualified} is damaged: {message}",
            subject=self.subject(rel),
            path=self.events.file_path(rel),
            details=self.details(
                rel, step=step, server_message=message, sqlstate=sqlstate, **_location(message)
            ),
            advice=ADVICE[advice_key].format(name=rel.qualified, table=rel.owner_qualified),
        )

    def table_corrupt(self, rel: Relation, problems: List[dict], step: str, sqlstate: Optional[str]) -> None:
        toast = rel.kind == "t" or any("toast" in p.get("message", "").lower() for p in problems)
        code = "toast-corrupt" if toast else "table-corrupt"
        name = rel.owner_qualified if rel.kind == "t" else rel.qualified
        if (code, rel.oid) in self.reported:
            return
        self.reported.add((code, rel.oid))
        first = problems[0]
        where = ""
        if first.get("block") is not None:
            where = (
                f" (block {first['block']}"
                + (f", offset {first['offset']}" if first.get("offset") else "")
                + ")"
            )
        more = f"; {len(problems)} problems in all" if len(problems) > 1 else ""
        self.events.finding(
            code,
            "critical",
            f"{rel.word} {rel.qualified} is damaged{where}: {first.get('message', '')}{more}",
            subject=self.subject(rel),
            path=self.events.file_path(rel),
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
        )

    def report_missing(self, rel: Relation, message: str) -> None:
        if ("file-missing", rel.oid) in self.reported:
            return
        self.reported.add(("file-missing", rel.oid))
        kind = "index" if rel.is_index else "table"
        self.events.finding(
            "file-missing",
            "critical",
            f"the file of {rel.word} {rel.qualified} ({rel.filepath}) is gone: {message}",
            subject=self.subject(rel),
            path=self.events.file_path(rel),
            details=self.details(rel, server_message=message, catalog_pages=rel.pages),
            advice=ADVICE[f"file-missing-{kind}"].format(
                name=rel.qualified if rel.is_index else rel.owner_qualified
            ),
        )

    # -- the checks ----------------------------------------------------------------------------
    def audit(self) -> None:
        relations = self.catalog()
        if relations is None:
            return
        self.events.count("databases_checked")
        self.check_files(relations)
        amcheck = self.amcheck_schema()
        if amcheck:
            self.check_heaps(amcheck, relations)
            self.check_indexes(amcheck, relations)
        self.recheck_files(relations)
        self.check_rows(relations)
        self.report_denied()

    def catalog(self) -> Optional[List[Relation]]:
        try:
            recovery = self.conn.execute(
                "SELECT pg_is_in_recovery(), current_setting('block_size')::int"
            ).fetchone()
            rows = self.conn.execute(CATALOG_QUERY).fetchall()
        except psycopg.Error as error:
            self.failed(error, "reading the catalog", None)
            self.events.incomplete(f"database {self.dbname}: the catalog could not be read")
            return None
        in_recovery, self.block_size = recovery
        relations = []
        for row in rows:
            rel = Relation(*row)
            if rel.shared and not self.include_shared:
                continue
            # Unlogged relations have no data on a standby.
            if in_recovery and rel.persistence == "u":
                continue
            relations.append(rel)
            if rel.filepath:
                self.by_path[rel.filepath] = rel
        return relations

    def short_files(self, relations: List[Relation]) -> List[Relation]:
        short = []
        for rel in relations:
            if rel.size is None:
                continue
            if (rel.pages > 0 and rel.size < rel.pages * self.block_size) or rel.size % self.block_size:
                short.append(rel)
        return short

    def file_sizes(self, relations: List[Relation]) -> Optional[Dict[int, Optional[int]]]:
        """Size of each relation's main fork from its files (None: the file is gone), in one
        statement that takes no lock; None when the role may not stat files."""
        listed = [rel for rel in relations if rel.filepath]
        try:
            rows = self.conn.execute(
                "SELECT u.oid, (pg_stat_file(u.path, true)).size"
                " FROM unnest(%s::oid[], %s::text[]) AS u(oid, path)",
                ([rel.oid for rel in listed], [rel.filepath for rel in listed]),
            ).fetchall()
        except psycopg.Error as error:
            if error_kind(error) in ("permission", "other"):
                self.events.count("file_sizes_from_the_server_databases")
                return None
            self.failed(error, "checking relation files", None)
            return None
        sizes = dict(rows)
        for rel in listed:
            if sizes.get(rel.oid) == SEGMENT_BYTES:
                sizes[rel.oid] = self.segmented_size(rel)
        return sizes

    def segmented_size(self, rel: Relation) -> Optional[int]:
        """The size of a relation of more than one 1 GB segment file (`path`, `path.1`, ...)."""
        total, segment = 0, 0
        while segment < MAX_SEGMENTS:
            path = rel.filepath if segment == 0 else f"{rel.filepath}.{segment}"
            rows = self.query("SELECT (pg_stat_file(%s, true)).size", (path,), "checking relation files", rel)
            if not rows or rows[0][0] is None:
                break
            total += rows[0][0]
            if rows[0][0] < SEGMENT_BYTES:
                break
            segment += 1
        return total

    def check_files(self, relations: List[Relation]) -> None:
        self.file_candidates = self.measure(relations)
        self.file_candidates |= {rel.oid for rel in self.short_files(relations)}
        self.events.count("relation_files_checked", len(relations))

    def measure(self, relations: List[Relation]) -> set:
        """Set each relation's size; return the oids of those whose file is gone."""
        sizes = self.file_sizes(relations)
        if sizes is None:
            for rel in relations:
                rel.size = self.size_of(rel)
            return set()
        for rel in relations:
            rel.size = sizes.get(rel.oid)
        return {rel.oid for rel in relations if rel.filepath and sizes.get(rel.oid) is None}

    def size_of(self, rel: Relation) -> Optional[int]:
        """The size of the relation's main fork, one relation at a time: `pg_relation_size` takes an
        AccessShareLock, so a relation someone holds exclusively times out alone."""
        rows = self.query(
            "SELECT pg_relation_size(%s::oid::regclass)", (rel.oid,), "checking relation files", rel
        )
        return rows[0][0] if rows else None

    def recheck_files(self, relations: List[Relation]) -> None:
        """Report files gone or shorter than the catalog says, if still so after the other checks:
        a concurrent TRUNCATE, VACUUM or REINDEX changes the catalog and the file together."""
        candidates = [rel for rel in relations if rel.oid in self.file_candidates]
        if not candidates:
            return
        rows = self.query(
            "SELECT c.oid, c.relpages, pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = ANY(%s)",
            ([rel.oid for rel in candidates],),
            step="checking relation files",
        )
        if rows is None:
            return
        now = {row[0]: row for row in rows}
        fresh = []
        for rel in candidates:
            row = now.get(rel.oid)
            if row is None or row[2] != rel.filepath:
                continue
            rel.pages = row[1]
            fresh.append(rel)
        missing = self.measure(fresh)
        for rel in fresh:
            if rel.oid in missing:
                self.report_missing(rel, "No such file or directory")
        for rel in self.short_files([rel for rel in fresh if rel.oid not in missing]):
            if ("file-missing", rel.oid) in self.reported:
                continue
            self.report_short(rel)

    def report_short(self, rel: Relation) -> None:
        self.reported.add(("file-short", rel.oid))
        kind = "index" if rel.is_index else "table"
        expected = rel.pages * self.block_size
        if rel.size % self.block_size:
            what = f"is {rel.size} bytes, not a whole number of {self.block_size}-byte blocks"
        else:
            what = f"has {rel.size // self.block_size} blocks, the catalog says {rel.pages}"
        self.events.finding(
            "file-short",
            "critical",
            f"the file of {rel.word} {rel.qualified} ({rel.filepath}) {what}",
            subject=self.subject(rel),
            path=self.events.file_path(rel),
            details=self.details(rel, size=rel.size, catalog_pages=rel.pages, expected_size=expected),
            advice=ADVICE[f"file-short-{kind}"].format(
                name=rel.qualified if rel.is_index else rel.owner_qualified
            ),
        )

    def amcheck_schema(self) -> Optional[str]:
        """The schema of the amcheck extension here, installing it when asked; None when absent."""
        found = self.query(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'amcheck'",
            step="looking for amcheck",
        )
        if found is None:
            return None
        if not found and self.settings.get("install_amcheck"):
            found = self.install_amcheck()
        if not found:
            self.events.finding(
                "amcheck-missing",
                "warning",
                f"the amcheck extension is not installed in database {self.dbname}: its indexes and tables "
                "were not verified page by page (the other checks ran)",
                subject=self.subject(),
                details=self.details(),
                advice="Install it (CREATE EXTENSION amcheck; it ships with the server's contrib package) or "
                "re-run with --set postgres.install_amcheck=true.",
            )
            return None
        schema = found[0][0]
        allowed = self.query(
            "SELECT has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p JOIN pg_namespace n"
            " ON n.oid = p.pronamespace WHERE n.nspname = %s"
            " AND p.proname IN ('bt_index_check', 'verify_heapam')",
            (schema,),
            step="looking for amcheck",
        )
        if allowed and not all(row[0] for row in allowed):
            self.denied.setdefault("running the amcheck functions", []).append(self.dbname)
            return None
        return schema

    def install_amcheck(self) -> list:
        try:
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION READ WRITE")
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg.Error as error:
            self.failed(error, "installing amcheck", None)
            return []
        self.events.finding(
            "amcheck-installed",
            "info",
            f"installed the amcheck extension in database {self.dbname} (postgres.install_amcheck=true)",
            subject=self.subject(),
            details=self.details(),
            advice="Nothing to do; DROP EXTENSION amcheck; removes it.",
        )
        return (
            self.query(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                " WHERE e.extname = 'amcheck'"
            )
            or []
        )

    def has_function(self, schema: str, name: str) -> bool:
        rows = self.query(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s AND p.proname = %s",
            (schema, name),
        )
        return bool(rows)

    def groups(self, relations: List[Relation]) -> Iterator[List[Relation]]:
        """Small relations in groups checked by one statement each (round trips dominate their
        check), big ones alone."""
        group: List[Relation] = []
        for rel in relations:
            size = rel.size if rel.size is not None else rel.pages * self.block_size
            if size >= SMALL_RELATION_BYTES:
                yield [rel]
                continue
            group.append(rel)
            if len(group) == GROUP_SIZE:
                yield group
                group = []
        if group:
            yield group

    def batch(self, statement, oids: List[int]) -> Optional[list]:
        """The rows of one statement over a group, or None when it failed (the caller then checks
        each relation alone, to know which one failed and why)."""
        try:
            return self.conn.execute(statement, (oids,)).fetchall()
        except psycopg.Error as error:
            if (self.conn.closed or self.conn.broken) and not self.reconnect():
                raise _DatabaseLost(server_message(error)) from error
            return None

    def check_heaps(self, schema: str, relations: List[Relation]) -> None:
        if not self.has_function(schema, "verify_heapam"):
            self.events.count("heap_check_unavailable_databases")
            return
        one = sql.SQL(
            "SELECT %s::oid, blkno, offnum, attnum, msg FROM {}.verify_heapam(%s::oid::regclass,"
            " on_error_stop => false, check_toast => true, skip => 'none')"
        ).format(sql.Identifier(schema))
        many = sql.SQL(
            "SELECT u.oid, v.blkno, v.offnum, v.attnum, v.msg FROM unnest(%s::oid[]) AS u(oid)"
            " CROSS JOIN LATERAL {}.verify_heapam(u.oid::regclass, on_error_stop => false,"
            " check_toast => true, skip => 'none') v"
        ).format(sql.Identifier(schema))
        tables = [rel for rel in relations if rel.kind in ("r", "m", "t")]
        for group in self.groups(tables):
            group = [rel for rel in group if rel.oid not in self.skipped_oids()]
            rows = self.batch(many, [rel.oid for rel in group]) if len(group) > 1 else None
            if rows is not None:
                self.heap_results(group, rows)
                continue
            for rel in group:
                found = self.query(one, (rel.oid, rel.oid), step="verify_heapam", rel=rel)
                if found is not None:
                    self.heap_results([rel], found)

    def heap_results(self, group: List[Relation], rows: list) -> None:
        self.events.count("tables_checked", len(group))
        problems: Dict[int, List[dict]] = {}
        for oid, block, offset, attribute, message in rows:
            problems.setdefault(oid, []).append(
                {"block": block, "offset": offset, "attribute": attribute, "message": message}
            )
        for rel in group:
            if rel.oid in problems:
                self.table_corrupt(rel, problems[rel.oid], "verify_heapam", None)

    def skipped_oids(self) -> set:
        """Relations not worth another statement: their file is gone, or they could not be locked."""
        return {oid for code, oid in self.reported if code in ("file-missing", "timeout")}

    def check_indexes(self, schema: str, relations: List[Relation]) -> None:
        one = sql.SQL("SELECT {}.bt_index_check(%s::oid::regclass, true)").format(sql.Identifier(schema))
        many = sql.SQL(
            "SELECT {}.bt_index_check(u.oid::regclass, true) FROM unnest(%s::oid[]) AS u(oid)"
        ).format(sql.Identifier(schema))
        indexes = []
        for rel in relations:
            if rel.is_index and rel.access_method == "btree":
                if rel.usable:
                    indexes.append(rel)
                else:
                    self.events.count("indexes_not_valid_skipped")
        for group in self.groups(indexes):
            group = [rel for rel in group if rel.oid not in self.skipped_oids()]
            if len(group) > 1 and self.batch(many, [rel.oid for rel in group]) is not None:
                self.events.count("indexes_checked", len(group))
                continue
            for rel in group:
                if self.query(one, (rel.oid,), step="bt_index_check", rel=rel) is not None:
                    self.events.count("indexes_checked")

    def check_rows(self, relations: List[Relation]) -> None:
        """Count the rows of each table (reading every value with `full_read`) and compare with the
        statistics: rows that vanish without an error (a zeroed pg_xact) show only here."""
        full_read = bool(self.settings.get("full_read"))
        minimum = int(self.settings["row_loss_min"])
        for rel in relations:
            if rel.kind not in ("r", "m") or rel.oid in self.skipped_oids():
                continue
            # A table whose file lost blocks lost their rows too: that finding says why.
            shortened = ("file-short", rel.oid) in self.reported
            estimate = 0 if shortened else self.estimate(rel)
            if not full_read and estimate < minimum:
                continue
            rows = self.read_table(rel) if full_read else self.count_table(rel)
            if rows is None:
                continue
            self.events.count("rows_counted", rows)
            lost = estimate - rows
            if lost >= minimum and lost >= estimate * float(self.settings["row_loss_ratio"]):
                self.events.finding(
                    "rows-lost",
                    "warning",
                    f"table {rel.qualified} has {rows} visible rows, its statistics say about {estimate}",
                    subject=self.subject(rel),
                    details=self.details(rel, rows=rows, estimated_rows=estimate),
                    advice=ADVICE["rows-lost"].format(name=rel.qualified),
                )

    @staticmethod
    def estimate(rel: Relation) -> int:
        """The rows the statistics expect: the smaller of the last VACUUM/ANALYZE (`reltuples`) and the
        running count of the cumulative statistics (`n_live_tup`), each when known; counting low
        keeps a stale estimate from raising a false alarm."""
        known = [value for value in (rel.tuples, rel.live_tuples) if value is not None and value > 0]
        if rel.tuples == 0:
            known.append(0)
        return int(min(known)) if known else 0

    def count_table(self, rel: Relation) -> Optional[int]:
        statement = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
            sql.Identifier(rel.schema), sql.Identifier(rel.name)
        )
        rows = self.query(statement, step="counting rows", rel=rel)
        return None if rows is None else int(rows[0][0])

    def read_table(self, rel: Relation) -> Optional[int]:
        """Read every row with every value detoasted, into nothing: finds damaged TOAST values."""
        statement = sql.SQL("COPY (SELECT * FROM ONLY {}.{}) TO STDOUT").format(
            sql.Identifier(rel.schema), sql.Identifier(rel.name)
        )
        try:
            with self.conn.cursor() as cursor:
                with cursor.copy(statement) as copy:
                    for _ in copy:
                        pass
                count = cursor.rowcount
        except psycopg.Error as error:
            self.failed(error, "reading every row", rel)
            return None
        self.events.count("tables_read")
        return max(count, 0)

    def report_denied(self) -> None:
        for step, names in self.denied.items():
            self.events.finding(
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
            self.events.incomplete("some objects were not checked: permission denied")


class _DatabaseLost(Exception):
    """The session died and could not be re-opened."""


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


def safe_label(dsn: str) -> str:
    """A name for the cluster a DSN reaches, without its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    return f"{host}:{params.get('port') or os.environ.get('PGPORT') or 5432}"


def audit_cluster(
    label: str, conninfo: str, settings: Dict[str, Any], jobs: int, data_dir: Optional[str] = None
) -> Iterator[dict]:
    """The events of checking every database of one cluster, databases in parallel up to `jobs`."""
    out: queue.Queue = queue.Queue()
    events = Events(out.put, label, data_dir)
    try:
        conn = _first_connection(conninfo, conninfo_to_dict(conninfo).get("dbname"), settings)
    except psycopg.Error as error:
        events.finding(
            "connection-failed",
            "warning",
            f"cannot connect to cluster {label}: {server_message(error)}",
            subject=label,
            details={"server_message": server_message(error)},
            advice="Check that the server runs, the DSN, the password (postgres.password_file or ~/.pgpass) "
            "and pg_hba.conf; as root, give no DSN and fsaudit connects as the cluster's owner.",
        )
        events.incomplete(f"cluster {label} was not checked: cannot connect")
        yield from _drain(out)
        return
    with conn:
        try:
            version, databases = _cluster_checks(conn, events, settings)
        except psycopg.Error as error:
            events.finding(
                "check-failed",
                "warning",
                f"cannot list the databases of cluster {label}: {server_message(error)}",
                subject=label,
                details={
                    "server_message": server_message(error),
                    "sqlstate": getattr(error, "sqlstate", None),
                },
                advice="Re-run the audit; if it fails again, read the server log from the time of the audit.",
            )
            events.incomplete(f"cluster {label} was not checked")
            return
        # Paths in the report are paths on the audited system: only a server reached over a Unix
        # socket is known to run here.
        if events.data_dir is None and (conn.info.host or "").startswith("/"):
            events.data_dir = _data_directory(conn)
        yield from _drain(out)
        workers = min(jobs, _spare_connections(conn) // 4 or 1)
        yield from _audit_databases(events, out, conninfo, databases, settings, workers)
        # Read last, so that pages this audit found damaged are counted too.
        try:
            _checksum_failures(conn, events, version)
        except psycopg.Error as error:
            events.incomplete(
                f"cluster {label}: checksum failures could not be read ({server_message(error)})"
            )
        yield from _drain(out)


def _spare_connections(conn: psycopg.Connection) -> int:
    """Connection slots still free on the server; the audit takes at most a quarter of them, so
    the application keeps room on a busy server."""
    try:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int - count(*) FROM pg_stat_activity"
        ).fetchone()
    except psycopg.Error:
        return 4
    return max(int(row[0]), 0)


def _audit_databases(
    events: Events, out: queue.Queue, conninfo: str, databases: List[str], settings: Dict[str, Any], jobs: int
) -> Iterator[dict]:
    if not databases:
        return

    def work(index: int, dbname: str) -> None:
        try:
            DatabaseAudit(events, conninfo, dbname, settings, shared=index == 0).run()
        except _DatabaseLost as lost:
            events.incomplete(f"database {dbname}: the connection was lost ({lost})")
        except Exception as error:  # one broken database never stops the others
            events.incomplete(f"database {dbname}: the check failed: {type(error).__name__}: {error}")
        finally:
            out.put(_DONE)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(databases)))) as pool:
        for index, dbname in enumerate(databases):
            pool.submit(work, index, dbname)
        remaining = len(databases)
        while remaining:
            event = out.get()
            if event is _DONE:
                remaining -= 1
            else:
                yield event


def _drain(out: queue.Queue) -> Iterator[dict]:
    while not out.empty():
        event = out.get()
        if event is not _DONE:
            yield event


def _first_connection(conninfo: str, dbname: Optional[str], settings) -> psycopg.Connection:
    if dbname:
        return connect(conninfo, dbname, settings)
    try:
        return connect(conninfo, "postgres", settings)
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise
        return connect(conninfo, "template1", settings)


def _data_directory(conn: psycopg.Connection) -> Optional[str]:
    try:
        return conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.Error:
        return None


def _cluster_checks(conn: psycopg.Connection, events: Events, settings: Dict[str, Any]) -> tuple:
    """Say whether checksums are on; return the server version and the databases to check."""
    label = events.cluster
    version, checksums = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('data_checksums')"
    ).fetchone()
    events.count("clusters_checked")
    events.count("clusters_with_data_checksums" if checksums == "on" else "clusters_without_data_checksums")
    if checksums != "on":
        events.finding(
            "checksums-disabled",
            "info",
            f"cluster {label} runs without data checksums: a damaged page is noticed only when the "
            "cross-checks (indexes against tables, files against the catalog, rows against statistics) "
            "see it",
            subject=label,
            details={"server_version_num": version},
            advice="Enable checksums at the next maintenance window (pg_checksums --enable while the "
            "cluster is stopped).",
        )
    names = [
        row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
    ]
    wanted = settings.get("databases") or []
    for name in wanted:
        if name not in names:
            events.finding(
                "connection-failed",
                "warning",
                f"database {name} does not exist in cluster {label} or does not allow connections",
                subject=f"{label} {name}",
                details={"database": name},
                advice="Check the name given in postgres.databases.",
            )
            events.incomplete(f"database {name} was not checked")
    if wanted:
        names = [name for name in names if name in wanted]
    first = conn.info.dbname
    # The database we are connected to checks the shared catalogs: put it first.
    names.sort(key=lambda name: name != first)
    return version, names


def _checksum_failures(conn: psycopg.Connection, events: Events, version: int) -> None:
    label = events.cluster
    if version >= 120000:
        rows = conn.execute(
            "SELECT COALESCE(datname, '(shared objects)'), checksum_failures, checksum_last_failure::text"
            " FROM pg_stat_database WHERE checksum_failures > 0"
        ).fetchall()
        for dbname, failures, last in rows:
            events.finding(
                "checksum-failures",
                "critical",
                f"the server counted {failures} checksum failure(s) in database {dbname}, last at {last}",
                subject=f"{label} {dbname}",
                details={"database": dbname, "checksum_failures": failures, "last_failure": last},
                advice="The server read pages whose checksum did not match: find them in the server log "
                '("page verification failed") and restore the affected relations from a backup.',
            )
