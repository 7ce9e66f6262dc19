"""Checking one PostgreSQL cluster: its databases in parallel, each with `DatabaseAudit`.

The result is a stream of plain items (`problems`: Problem, Count, Incomplete), so the same code
runs in the audit process or in a child that became the cluster's owner.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional

import psycopg
from psycopg.conninfo import conninfo_to_dict

from fsaudit_checks.postgres.commitlog import (
    DamagedPage,
    NamedFile,
    find_damaged_pages,
    refused_for_damage,
    xid_in_message,
)
from fsaudit_checks.postgres.database import DatabaseAudit
from fsaudit_checks.postgres.parallel import Slots
from fsaudit_checks.postgres.problems import Count, Incomplete, Item, Place, at
from fsaudit_checks.postgres.relation import ADVICE
from fsaudit_checks.postgres.session import ServerWatch, connect, server_message

RESTARTED_ADVICE = (
    "The server restarted while fsaudit was reading {what}: a damaged row or page can crash the server "
    "when it is read, and every client of the server was disconnected. Find the crash in the server log "
    "('terminated by signal'); keep applications away from {name} and restore it from a backup (the other "
    "findings name what was found damaged before). fsaudit stopped checking this cluster: re-run the "
    "audit once that is done."
)


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
) -> Iterator[Item]:
    """What checking every database of one cluster finds, databases in parallel up to `jobs`."""
    place = Place(label, data_dir)
    try:
        conn = _first_connection(conninfo, conninfo_to_dict(conninfo).get("dbname"), settings)
    except psycopg.Error as error:
        damage = refused_for_damage(str(error))
        if damage is not None:
            yield from _refused(place, damage, error)
            return
        yield at(
            place,
            "connection-failed",
            "warning",
            f"cannot connect to cluster {label}: {server_message(error)}",
            subject=label,
            details={"server_message": server_message(error)},
            advice="Check that the server runs, the DSN, the password (postgres.password_file or ~/.pgpass) "
            "and pg_hba.conf; as root, give no DSN and fsaudit connects as the cluster's owner.",
        )
        yield Incomplete(f"cluster {label} was not checked: cannot connect")
        return
    with conn:
        try:
            version, databases, found = _cluster_checks(conn, place, settings)
        except psycopg.Error as error:
            yield at(
                place,
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
            yield Incomplete(f"cluster {label} was not checked")
            return
        yield from found
        # Paths in the report are paths on the audited system: only a server reached over a Unix
        # socket is known to run here.
        if place.data_dir is None and (conn.info.host or "").startswith("/"):
            place.data_dir = _data_directory(conn)
        damaged, found = _commit_log(conn, version)
        yield from found
        workers = min(jobs, _spare_connections(conn) // 4 or 1)
        # The first session stays idle from here on: if it dies too, the server restarted.
        watch = ServerWatch(conn)
        yield from _audit_databases(place, conninfo, databases, settings, workers, watch, damaged)
        if watch.restarted.is_set():
            yield from _server_restarted(place, watch)
            return
        # Read last, so that pages this audit found damaged are counted too.
        try:
            yield from _checksum_failures(conn, place, version)
        except psycopg.Error as error:
            yield Incomplete(
                f"cluster {label}: checksum failures could not be read ({server_message(error)})"
            )


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
    place: Place,
    conninfo: str,
    databases: List[str],
    settings: Dict[str, Any],
    jobs: int,
    watch: ServerWatch,
    damaged: List[DamagedPage],
) -> Iterator[Item]:
    """Check the databases, in parallel and each over several connections, `jobs` sessions at most in
    all; yield what each found database by database, in the order of `databases`."""
    if not databases:
        return
    slots = Slots(jobs)

    def work(index: int, dbname: str) -> List[Item]:
        audit = DatabaseAudit(
            Place(place.cluster, place.data_dir),
            conninfo,
            dbname,
            settings,
            shared=index == 0,
            slots=slots,
            watch=watch,
            damaged_pages=damaged,
        )
        slots.take()
        try:
            return audit.run()
        finally:
            slots.give()

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(databases)))) as pool:
        futures = [pool.submit(work, index, dbname) for index, dbname in enumerate(databases)]
        for future in futures:
            yield from future.result()


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


def _cluster_checks(conn: psycopg.Connection, place: Place, settings: Dict[str, Any]) -> tuple:
    """The server version, the databases to check, and what was found on the way: whether checksums
    are on, databases asked for that are not there."""
    label = place.cluster
    version, checksums = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('data_checksums')"
    ).fetchone()
    found: List[Item] = [Count("clusters_checked")]
    found.append(
        Count("clusters_with_data_checksums" if checksums == "on" else "clusters_without_data_checksums")
    )
    if checksums != "on":
        found.append(
            at(
                place,
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
        )
    names = [
        row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
    ]
    wanted = settings.get("databases") or []
    for name in wanted:
        if name not in names:
            found.append(
                at(
                    place,
                    "connection-failed",
                    "warning",
                    f"database {name} does not exist in cluster {label} or does not allow connections",
                    subject=f"{label} {name}",
                    details={"database": name},
                    advice="Check the name given in postgres.databases.",
                )
            )
            found.append(Incomplete(f"database {name} was not checked"))
    if wanted:
        names = [name for name in names if name in wanted]
    first = conn.info.dbname
    # The database we are connected to checks the shared catalogs: put it first.
    names.sort(key=lambda name: name != first)
    return version, names, found


def _checksum_failures(conn: psycopg.Connection, place: Place, version: int) -> Iterator[Item]:
    label = place.cluster
    if version < 120000:
        return
    rows = conn.execute(
        "SELECT COALESCE(datname, '(shared objects)'), checksum_failures, checksum_last_failure::text"
        " FROM pg_stat_database WHERE checksum_failures > 0"
    ).fetchall()
    for dbname, failures, last in rows:
        yield at(
            place,
            "checksum-failures",
            "critical",
            f"the server counted {failures} checksum failure(s) in database {dbname}, last at {last}",
            subject=f"{label} {dbname}",
            details={"database": dbname, "checksum_failures": failures, "last_failure": last},
            advice="The server read pages whose checksum did not match: find them in the server log "
            '("page verification failed") and restore the affected relations from a backup.',
        )


def _commit_log(conn: psycopg.Connection, version: int) -> tuple:
    """The damaged pages of the cluster's commit log (`commitlog`) and the counts; no pages when it
    cannot be read (the row counts against the statistics remain, as the fallback)."""
    try:
        damaged, pages = find_damaged_pages(conn, version)
    except psycopg.Error:
        if conn.broken or conn.closed:
            raise
        return [], [Count("commit_log_not_read_clusters")]
    return damaged, [Count("commit_log_pages_read", pages)]


def _server_restarted(place: Place, watch: ServerWatch) -> Iterator[Item]:
    """Say plainly that the server restarted during the audit, and what fsaudit was reading then."""
    label = place.cluster
    reading = [item for item in watch.reading if item.get("crashed")] or watch.reading
    named = [item for item in reading if item.get("relation") or item.get("relations")]
    first = (named or reading or [{}])[0]
    step = f" ({first['step']})" if first.get("step") else ""
    if first.get("relation"):
        what = f"{first.get('kind', 'relation')} {first['relation']} of database {first['database']}{step}"
        name = first["relation"]
    elif first.get("relations"):
        names = first["relations"]
        listed = ", ".join(names) + (", ..." if first.get("relation_count", 0) > len(names) else "")
        count = first.get("relation_count", len(names))
        what = f"one of {count} relations of database {first['database']}{step}: {listed}"
        name = "those relations"
    elif first.get("database"):
        what = f"database {first['database']}{step}"
        name = f"database {first['database']}"
    else:
        what, name = "it", "the damaged relations"
    yield at(
        place,
        "server-restarted",
        "critical",
        f"the server of cluster {label} restarted while fsaudit was reading {what}: every client "
        "was disconnected; the check of this cluster stopped there",
        subject=label,
        details={
            "database": first.get("database"),
            "relation": first.get("relation"),
            "relations": first.get("relations"),
            "step": first.get("step"),
            "server_message": first.get("server_message"),
            "reading": watch.reading[:20],
        },
        advice=RESTARTED_ADVICE.format(what=what, name=name),
    )
    yield Incomplete(f"cluster {label} was not checked to the end: its server restarted during the audit")


def _refused(place: Place, damage: NamedFile, error: BaseException) -> Iterator[Item]:
    """The server refuses every session because a file it needs cannot be read: that is damage."""
    label = place.cluster
    text = " ".join(str(error).split())
    commit_log = damage.kind == "commit-log"
    yield at(
        place,
        "commit-log-damaged" if commit_log else "file-missing",
        "critical",
        f"the server of cluster {label} refuses every session: {damage.path} cannot be read ({text})",
        subject=f"{label} {damage.path}",
        path=place.file_path(damage.path),
        details={"file": damage.path, "server_message": text, "xid": xid_in_message(text)},
        advice=ADVICE["commit-log-damaged"].format(tables="every table", file=damage.path)
        if commit_log
        else ADVICE["file-missing-other"].format(file=damage.path),
    )
    yield Incomplete(f"cluster {label} was not checked: the server refuses sessions")
