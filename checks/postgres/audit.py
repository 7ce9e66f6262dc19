"""Checking one PostgreSQL cluster: its databases in parallel, each with `DatabaseAudit`.

The result is a stream of events (see `postgres_session`), so the same code runs in the audit
process or in a child that became the cluster's owner.
"""

from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional

import psycopg
from psycopg.conninfo import conninfo_to_dict

from fsaudit_checks.postgres.database import DatabaseAudit
from fsaudit_checks.postgres.parallel import Slots
from fsaudit_checks.postgres.report import DatabaseLost
from fsaudit_checks.postgres.session import Events, connect, server_message

_DONE = object()


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
    """Check the databases, in parallel and each over several connections, `jobs` sessions at most in
    all; yield their events database by database, in the order of `databases`."""
    if not databases:
        return
    slots = Slots(jobs)

    def work(index: int, dbname: str) -> None:
        found: List[dict] = []
        mine = Events(found.append, events.cluster, events.data_dir)
        slots.take()
        try:
            DatabaseAudit(mine, conninfo, dbname, settings, shared=index == 0, slots=slots).run()
        except DatabaseLost as lost:
            mine.incomplete(f"database {dbname}: the connection was lost ({lost})")
        except Exception as error:  # one broken database never stops the others
            mine.incomplete(f"database {dbname}: the check failed: {type(error).__name__}: {error}")
        finally:
            slots.give()
            out.put((_DONE, index, found))

    done: Dict[int, List[dict]] = {}
    following = 0
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(databases)))) as pool:
        for index, dbname in enumerate(databases):
            pool.submit(work, index, dbname)
        while following < len(databases):
            _, index, found = out.get()
            done[index] = found
            while following in done:
                yield from done.pop(following)
                following += 1


def _drain(out: queue.Queue) -> Iterator[dict]:
    while not out.empty():
        yield out.get()


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
