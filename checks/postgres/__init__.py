"""The `postgres` checker: damaged data in every PostgreSQL cluster of the VM.

Page checksums do not catch a lost write (an old page image is valid, checksum included); what
catches it is cross-checking: indexes against their tables (amcheck with `heapallindexed`), tables
against the rules of the heap (`verify_heapam`), relation files against the catalog, rows against
the statistics, and the commit log against the rows that name it. Modules: `clusters` finds the
clusters; `cluster_audit` checks one cluster, `database` one database (with `files`, `rows`,
`amcheck`, `commitlog`, `parallel`), `report` says what their errors and results mean, `session`
holds the read-only session; they return plain problems (`problems`). This module picks the
clusters, runs the check of each (as the cluster's owner when fsaudit runs as root), and turns
the problems into Findings.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Dict, Iterator, List

from fsaudit.checker import Checker, Option, Skip
from fsaudit_checks.postgres.clusters import Cluster, discover, log_tail
from fsaudit_checks.postgres.problems import Incomplete, Item, decode, encode

LOG = logging.getLogger(__name__)
# libpq environment variables that name a server: with one of them set and no DSN, libpq's defaults
# (and ~/.pgpass) say where to connect, as they do for psql.
LIBPQ_SERVER_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSERVICE", "PGDATABASE")


class PostgresChecker(Checker):
    """PostgreSQL: indexes against tables (amcheck), heap pages, files against the catalog, lost rows."""

    name = "postgres"
    covers = "PostgreSQL databases"
    category = "databases"
    requires = ("psycopg",)
    extra = "postgres"
    options = (
        Option(
            "dsn",
            "libpq connection string of a cluster to check (all its databases); repeat for more",
            multiple=True,
            split=False,
        ),
        Option("databases", "check only these databases", multiple=True),
        Option(
            "data_dir",
            "data directory of a local cluster to check (instead of discovering them)",
            multiple=True,
        ),
        Option("password_file", "file holding the password for the DSNs (else PGPASSWORD or ~/.pgpass)"),
        Option(
            "install_amcheck",
            "CREATE EXTENSION amcheck where it is missing (writes!)",
            kind=bool,
            default=False,
        ),
        Option(
            "full_read",
            "read every row with every value detoasted (finds TOAST damage)",
            kind=bool,
            default=False,
        ),
        Option("statement_timeout", "seconds any one statement may run", kind=float, default=3600.0),
        Option(
            "lock_timeout",
            "seconds to wait for a lock before giving up on a relation",
            kind=float,
            default=10.0,
        ),
        Option(
            "row_loss_ratio",
            "report a table whose rows fell by this fraction of its statistics",
            kind=float,
            default=0.5,
        ),
        Option("row_loss_min", "... and by at least this many rows", kind=int, default=100),
    )
    codes = {
        "cluster-down": "a cluster is not running or its data directory is unreadable; its log says why",
        "connection-failed": "a cluster or database could not be reached; it was not checked",
        "permission-denied": "the role may not read some objects or run amcheck; they were not checked",
        "amcheck-missing": "amcheck is not installed in a database; page-level checks did not run",
        "amcheck-installed": "fsaudit installed amcheck because postgres.install_amcheck=true",
        "indexes-not-verified": "amcheck cannot verify indexes of these kinds (hash, gist...) here",
        "index-corrupt": "amcheck found a damaged index, or an index and its table that disagree",
        "table-corrupt": "verify_heapam or a read found damaged table or sequence pages or rows",
        "toast-corrupt": "values stored out of line (TOAST) are damaged",
        "file-missing": "the file of a table, index or sequence (or another file the server needs) is gone",
        "file-short": "a relation file has fewer blocks than the catalog says, or a partial block",
        "commit-log-damaged": "the commit log (pg_xact) lost transaction outcomes: their rows are hidden",
        "server-restarted": "the server restarted during the audit (a damaged row can crash it when read)",
        "rows-lost": "a table holds far fewer visible rows than its statistics say (vanished rows)",
        "checksum-failures": "the server counted data checksum failures",
        "checksums-disabled": "the cluster runs without data checksums (the server cannot see some damage)",
        "timeout": "a check hit statement_timeout or lock_timeout and did not finish",
        "check-failed": "a check failed for a reason other than damage or permissions",
    }

    def applies(self, target) -> bool:
        if self.dsns():
            return True
        if not target.live:
            raise Skip("PostgreSQL servers are checked on the running system: give postgres.dsn")
        if not self.clusters(target):
            raise Skip("no PostgreSQL cluster found (give postgres.dsn or postgres.data_dir)")
        return True

    def present(self, target) -> str:
        if self.dsns():
            return "the PostgreSQL server named by postgres.dsn or the libpq environment"
        clusters = self.clusters(target)
        if not clusters:
            return ""
        labels = ", ".join(cluster.label for cluster in clusters[:3])
        more = f" and {len(clusters) - 3} more" if len(clusters) > 3 else ""
        return f"PostgreSQL ({'cluster' if len(clusters) == 1 else 'clusters'} {labels}{more})"

    def dsns(self) -> List[str]:
        """The DSNs given, or libpq's defaults ("") when its environment names a server and no
        data directory was given."""
        if self.settings["dsn"]:
            return self.settings["dsn"]
        if not self.settings["data_dir"] and any(os.environ.get(name) for name in LIBPQ_SERVER_ENV):
            return [""]
        return []

    def clusters(self, target) -> List[Cluster]:
        return discover(target, self.settings["data_dir"])

    def run(self, target) -> Iterator:
        from fsaudit_checks.postgres import cluster_audit

        settings = self.audit_settings()
        jobs = self.context.jobs  # at least 1 (fsaudit.settings)
        if self.dsns():
            for dsn in self.dsns():
                label = cluster_audit.safe_label(dsn)
                yield from self.report(cluster_audit.audit_cluster(label, dsn, settings, jobs))
            return
        for cluster in self.clusters(target):
            if cluster.denied and os.geteuid() != 0:
                self.count("not_checked_permission")
                continue
            if cluster.problem or not cluster.running:
                yield self.cluster_down(target, cluster)
                continue
            if os.geteuid() == 0 and cluster.owner_uid not in (None, 0):
                items = items_as_owner(cluster, settings, jobs)
            else:
                conninfo = cluster.socket_conninfo(as_owner=os.geteuid() == cluster.owner_uid)
                items = cluster_audit.audit_cluster(cluster.label, conninfo, settings, jobs, cluster.data_dir)
            yield from self.report(items)
        denied = self.stats.get("not_checked_permission", 0)
        if denied:
            self.incomplete(f"{denied:,} files not checked: permission denied (run as root to check them)")

    def audit_settings(self) -> Dict:
        settings = dict(self.settings)
        path = settings.get("password_file")
        if path:
            with open(path, encoding="utf-8") as handle:
                settings["password"] = handle.readline().rstrip("\r\n")
        return settings

    def cluster_down(self, target, cluster: Cluster):
        lines, log_file = log_tail(target, cluster)
        where = "" if cluster.label == cluster.data_dir else f" ({cluster.data_dir})"
        why = cluster.problem or f"cluster {cluster.label}{where} is not running"
        said = (
            f"; its log ends with: {lines[-1]}" if lines else "; no log lines found where its log usually is"
        )
        self.incomplete(f"cluster {cluster.label} was not checked: it is not running")
        return self.finding(
            "cluster-down",
            "warning",
            why + said,
            path=cluster.data_dir,
            subject=cluster.label,
            details={
                "cluster": cluster.label,
                "data_dir": cluster.data_dir,
                "log_file": log_file,
                "log_tail": lines,
                "log_places": [] if lines else cluster.log_candidates,
            },
            advice="Start the cluster and read its log: lines like 'could not access status of "
            "transaction' or 'invalid page' name the damage. If it cannot start, restore it from a backup.",
        )


def items_as_owner(cluster: Cluster, settings: Dict, jobs: int) -> Iterator[Item]:
    """What checking `cluster` finds, checked by a forked child that became the cluster's owner, so
    it connects over the Unix socket with peer authentication and needs no password.

    A fork, not a new interpreter: the owner may not be allowed to read fsaudit's own files. The
    child therefore imports nothing new; it sends its items back as JSON lines over a pipe.
    """
    from fsaudit_checks.postgres import cluster_audit

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its items are what the tests see
        os.close(read_fd)
        os._exit(_child(cluster, settings, jobs, write_fd, cluster_audit.audit_cluster))
    os.close(write_fd)
    finished = False
    try:
        with os.fdopen(read_fd, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    yield decode(line)
                except (ValueError, TypeError, KeyError):
                    yield Incomplete(f"cluster {cluster.label}: unreadable result from the child process")
        finished = True
    finally:
        if not finished:
            os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        yield Incomplete(f"cluster {cluster.label}: the check as user {cluster.owner_name} did not finish")


def _child(cluster: Cluster, settings: Dict, jobs: int, write_fd: int, audit_cluster) -> int:
    out = os.fdopen(write_fd, "w", encoding="utf-8")
    status = 0
    try:
        os.setgroups([])
        os.setgid(cluster.owner_gid)
        os.setuid(cluster.owner_uid)
        os.chdir("/")
        os.environ.update(HOME=cluster.owner_home, USER=cluster.owner_name, LOGNAME=cluster.owner_name)
        for item in audit_cluster(cluster.label, cluster.socket_conninfo(), settings, jobs, cluster.data_dir):
            out.write(encode(item) + "\n")
            out.flush()
    except BaseException as error:  # whatever happens, the parent hears of it
        status = 1
        out.write(encode(Incomplete(f"cluster {cluster.label}: {type(error).__name__}: {error}")) + "\n")
    try:
        out.close()
    except OSError:
        status = 1
    return status
