"""One read-only PostgreSQL session, what its errors mean, and whether the server restarted.

Safety on a live server: every session is read-only (`default_transaction_read_only`), autocommit
(no long snapshot holds back VACUUM), with `statement_timeout` and `lock_timeout`, and takes no
parallel query workers (`max_parallel_workers_per_gather=0`): the audit's load is its `--jobs`
sessions, and the application keeps the server's workers.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

import psycopg
from psycopg.conninfo import conninfo_to_dict


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


def server_detail(error: BaseException) -> str:
    """The DETAIL line of a server error ("Could not open file ..."), or ""."""
    diag = getattr(error, "diag", None)
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    return (detail or "").strip()


def connect(conninfo: str, dbname: Optional[str], settings: Dict[str, Any]) -> psycopg.Connection:
    """A read-only, autocommit session with statement and lock timeouts."""
    options = [conninfo_to_dict(conninfo).get("options") or ""]
    options.append("-c default_transaction_read_only=on")
    options.append(f"-c statement_timeout={int(float(settings['statement_timeout']) * 1000)}")
    options.append(f"-c lock_timeout={int(float(settings['lock_timeout']) * 1000)}")
    options.append("-c idle_in_transaction_session_timeout=60000")
    options.append("-c max_parallel_workers_per_gather=0")
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


# The server ended every session because one of them crashed (57P02), or refuses new ones while it
# recovers from that (57P03).
RESTART_STATES = ("57P02", "57P03")
# The postmaster ends the other sessions a moment after one crashed: wait that long before asking.
RESTART_GRACE = 0.2


class ServerWatch:
    """Whether the server of a cluster restarted during its audit, and what the audit was reading.

    A session that dies alone (terminated by an administrator, a network cut) is reconnected; when
    the server restarts (a backend crashed: every session is dropped, the application's too), the
    audit of the cluster stops at once. The evidence is the session that stayed idle all along (the
    one that listed the databases): it dies with the others."""

    def __init__(self, conn: Optional[psycopg.Connection]):
        self.conn = conn
        self.lock = threading.Lock()
        self.restarted = threading.Event()
        self.reading: List[Dict[str, Any]] = []

    def session_died(self, error: BaseException, reading: Dict[str, Any]) -> bool:
        """A session died with `error` while doing `reading` ({database, relation, step}): True when
        the server restarted; what was being read is kept for the report."""
        state = getattr(error, "sqlstate", None)
        if not self.restarted.is_set() and (state in RESTART_STATES or self._idle_session_died()):
            self.restarted.set()
        if not self.restarted.is_set():
            return False
        with self.lock:
            # A session that was told "terminating connection because of crash of another server
            # process" was not the one that crashed.
            crashed = state is None
            self.reading.append({**reading, "server_message": server_message(error), "crashed": crashed})
        return True

    def _idle_session_died(self) -> bool:
        if self.conn is None:
            return False
        time.sleep(RESTART_GRACE)
        with self.lock:
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error:
                return True
            return bool(self.conn.broken or self.conn.closed)
