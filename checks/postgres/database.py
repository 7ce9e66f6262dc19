"""The checks of one database: files against the catalog, the rows a damaged commit log hides,
amcheck of tables and indexes, sequences, row counts, full reads.

Only AccessShareLocks are taken (plain reads, `bt_index_check`, `gin_index_check`, `verify_heapam`),
which never block writers; nothing is created unless `install_amcheck` is set. Rows of a table are
read (counted, read in full, or hashed by `heapallindexed`) only after `verify_heapam` found the table
sound: a damaged row can crash the server when it is read.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import psycopg

from fsaudit_checks.postgres.amcheck import FUNCTIONS_QUERY, Amcheck
from fsaudit_checks.postgres.commitlog import DamagedPage
from fsaudit_checks.postgres.files import RelationFiles
from fsaudit_checks.postgres.parallel import (
    PHASE_COMMIT_LOG,
    PHASE_DENIED,
    PHASE_FILES,
    PHASE_HEAPS,
    PHASE_INDEXES,
    PHASE_RECHECK,
    PHASE_ROWS,
    PHASE_SEQUENCES,
    Slots,
    Task,
    run_tasks,
)
from fsaudit_checks.postgres.problems import Item
from fsaudit_checks.postgres.relation import Relation
from fsaudit_checks.postgres.report import MAX_NAMES_LISTED, DatabaseLost, DatabaseReport, ServerRestarted
from fsaudit_checks.postgres.rows import RowChecks
from fsaudit_checks.postgres.session import connect, server_message

# Relations smaller than this are checked GROUP_SIZE at a time, in one statement.
SMALL_RELATION_BYTES = 1 << 20
GROUP_SIZE = 50
# What reading a byte costs, against `verify_heapam` or a row count (1), measured on pgbench tables:
# `heapallindexed` hashes every index entry and every row of the table; a full read detoasts and
# formats every value.
HEAPALLINDEXED_COST = 4
READ_COST = 3
DAMAGE_CODES = ("table-corrupt", "toast-corrupt")

CATALOG_QUERY = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpages, c.reltuples::float8, c.relisshared,
       c.relpersistence, pg_relation_filepath(c.oid), NULL::bigint, am.amname,
       COALESCE(i.indisvalid AND i.indisready AND i.indislive, true),
       COALESCE(it.relname, tt.relname, st.relname), COALESCE(itn.nspname, ttn.nspname, stn.nspname),
       s.n_live_tup, NULLIF(c.reltoastrelid, 0), COALESCE(i.indisunique, false),
       NULLIF(c.relfrozenxid::text::bigint, 0), quote_ident(sa.attname)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class it ON it.oid = i.indrelid
LEFT JOIN pg_namespace itn ON itn.oid = it.relnamespace
LEFT JOIN pg_class tt ON c.relkind = 't' AND tt.reltoastrelid = c.oid
LEFT JOIN pg_namespace ttn ON ttn.oid = tt.relnamespace
LEFT JOIN pg_depend d ON c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class st ON st.oid = d.refobjid
LEFT JOIN pg_namespace stn ON stn.oid = st.relnamespace
LEFT JOIN pg_attribute sa ON sa.attrelid = d.refobjid AND sa.attnum = d.refobjsubid
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'i', 't', 'm', 'S') AND c.relpersistence <> 't'
ORDER BY c.oid
"""
SEQUENCE_STATEMENTS = (
    "SELECT pg_sequence_last_value(%(oid)s::oid::regclass)",
    "SELECT u.oid, pg_sequence_last_value(u.oid::regclass) FROM unnest(%(oids)s::oid[]) AS u(oid)",
)


class DatabaseAudit(RelationFiles, RowChecks, DatabaseReport):
    """Every check of one database. The per-relation checks (amcheck of each table and index, the
    sequences, the row counts, the full reads) run on this connection and, while the cluster's
    connection budget has free slots, on helper connections too (`parallel`), the biggest relations
    first."""

    def __init__(
        self,
        *args,
        slots: Optional[Slots] = None,
        damaged_pages: Optional[List[DamagedPage]] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.slots = slots or Slots(1)
        self.skip_before: set = set()
        # Commit-log pages found damaged in the cluster (`commitlog`): the rows they hide are looked for.
        self.damaged_pages = damaged_pages or []
        # Tables verify_heapam checked; tables the damaged commit log hides rows of.
        self.heap_verified: set = set()
        self.hidden_tables: set = set()
        self.heap_available = False

    def run(self) -> List[Item]:
        """Check the database; return what was found (nothing when the server restarted before)."""
        if self.watch.restarted.is_set():
            return []
        try:
            self.conn = connect(self.conninfo, self.dbname, self.settings)
        except psycopg.Error as error:
            if not self.watch.session_died(error, {"database": self.dbname, "step": "connecting"}):
                self.connection_failed(error)
            return self.flush()
        try:
            self.audit()
        except ServerRestarted:
            pass  # the cluster's check says so, once
        except DatabaseLost as lost:
            self.incomplete(f"database {self.dbname}: the connection was lost ({lost})")
        except Exception as error:  # one broken database never stops the others
            self.incomplete(f"database {self.dbname}: the check failed: {type(error).__name__}: {error}")
        finally:
            self.conn.close()
        return self.flush()

    def audit(self) -> None:
        self.rank = (PHASE_FILES, 0)
        relations = self.catalog()
        if relations is None:
            return
        self.count("databases_checked")
        self.check_files(relations)
        if self.damaged_pages:
            self.rank = (PHASE_COMMIT_LOG, 0)
            self.commit_log_rows(relations)
        amcheck = self.amcheck()
        self.heap_available = amcheck is not None and amcheck.heap
        if amcheck is not None and not amcheck.heap:
            self.count("heap_check_unavailable_databases")
        # What the files already showed gone or unlockable; the parallel checks skip on this alone,
        # not on what another connection happens to find first, so the report does not depend on
        # timing.
        self.skip_before = self.skipped_oids()
        deferred = set(self.file_candidates)
        heaps, heap_of = self.heap_tasks(relations, amcheck if self.heap_available else None)
        tasks = heaps + self.rows_tasks(relations, deferred, heap_of)
        tasks += self.sequence_tasks(relations)
        if amcheck is not None:
            tasks += self.index_tasks(amcheck, relations, heap_of)
        run_tasks(self, tasks)
        if self.watch.restarted.is_set():
            return
        self.rank = (PHASE_RECHECK, 0)
        self.recheck_files(relations)
        # A table whose file may have lost blocks is counted only once the recheck said so or not.
        for position, rel in enumerate(relations):
            if rel.oid in deferred:
                self.rank = (PHASE_ROWS, position)
                self.check_rows(rel)
        self.rank = (PHASE_DENIED, 0)
        self.report_denied()

    # -- the tasks ------------------------------------------------------------------------------
    def heap_tasks(self, relations: List[Relation], amcheck: Optional[Amcheck]) -> tuple:
        """One `verify_heapam` task per group of tables (none without it); and the task of each table."""
        if amcheck is None:
            return [], {}
        position = {rel.oid: index for index, rel in enumerate(relations)}
        statements = amcheck.heap_statements()
        tasks: List[Task] = []
        task_of: Dict[int, Task] = {}
        for group in self.groups([rel for rel in relations if rel.kind in ("r", "m", "t")]):
            task = Task(
                sum(self.size(rel) for rel in group),
                PHASE_HEAPS,
                position[group[0].oid],
                lambda group=group: self.check_heaps(statements, group),
            )
            tasks.append(task)
            task_of.update((rel.oid, task) for rel in group)
        return tasks, task_of

    def rows_tasks(self, relations: List[Relation], deferred: set, heap_of: Dict[int, Task]) -> List[Task]:
        """One task per group of tables whose rows are counted (or read), each after `verify_heapam`
        checked the tables and their TOAST tables."""
        position = {rel.oid: index for index, rel in enumerate(relations)}
        tables = [rel for rel in relations if rel.kind in ("r", "m")]
        read_cost = READ_COST if self.settings.get("full_read") else 1
        tasks = []
        for group in self.groups(tables):
            counted = [rel for rel in group if rel.oid not in deferred and self.wants_rows(rel)]
            if not counted:
                continue

            def work(counted=counted) -> None:
                for rel in counted:
                    self.rank = (PHASE_ROWS, position[rel.oid])
                    self.check_rows(rel)

            needs = {
                id(heap_of[oid]): heap_of[oid]
                for rel in counted
                for oid in (rel.oid, rel.toast_oid)
                if oid in heap_of
            }
            cost = sum(self.size(rel) for rel in counted) * read_cost
            tasks.append(Task(cost, PHASE_ROWS, position[counted[0].oid], work, needs=list(needs.values())))
        return tasks

    def index_tasks(
        self, amcheck: Amcheck, relations: List[Relation], heap_of: Dict[int, Task]
    ) -> List[Task]:
        """One task per group of verifiable indexes of one access method, each after `verify_heapam`
        checked their tables (`heapallindexed` reads the whole table too); the other kinds are counted
        and said to be unverified."""
        position = {rel.oid: index for index, rel in enumerate(relations)}
        tables = {(rel.schema, rel.name): rel for rel in relations if not rel.is_index}
        by_method: Dict[str, List[Relation]] = {}
        unverified: Dict[str, List[Relation]] = {}
        for rel in relations:
            if not rel.is_index:
                continue
            if not rel.usable:
                self.count("indexes_not_valid_skipped")
            elif amcheck.verifies(rel.access_method):
                by_method.setdefault(rel.access_method, []).append(rel)
            else:
                unverified.setdefault(rel.access_method or "unknown", []).append(rel)
        self.report_unverified(amcheck, unverified)
        tasks = []
        for method, indexes in sorted(by_method.items()):
            statements = amcheck.index_statements(method)
            for group in self.groups(indexes):
                cost = 0
                needs: Dict[int, Task] = {}
                for rel in group:
                    table = tables.get((rel.owner_schema, rel.owner_name))
                    cost += self.size(rel) + (self.size(table) * HEAPALLINDEXED_COST if table else 0)
                    if table is not None and table.oid in heap_of:
                        needs[id(heap_of[table.oid])] = heap_of[table.oid]
                tasks.append(
                    Task(
                        cost,
                        PHASE_INDEXES,
                        position[group[0].oid],
                        lambda group=group, statements=statements: self.check_indexes(statements, group),
                        needs=list(needs.values()),
                    )
                )
        return tasks

    def sequence_tasks(self, relations: List[Relation]) -> List[Task]:
        """Read each sequence (its one page): a sequence whose file is gone or damaged fails here as
        it would at the application's next nextval()."""
        position = {rel.oid: index for index, rel in enumerate(relations)}
        sequences = [rel for rel in relations if rel.kind == "S"]
        return [
            Task(
                sum(self.size(rel) for rel in group),
                PHASE_SEQUENCES,
                position[group[0].oid],
                lambda group=group: self.check_sequences(group),
            )
            for group in self.groups(sequences)
        ]

    def size(self, rel: Relation) -> int:
        return rel.size if rel.size is not None else rel.pages * self.block_size

    def groups(self, relations: List[Relation]) -> Iterator[List[Relation]]:
        """Small relations in groups checked by one statement each (round trips dominate their
        check), big ones alone."""
        group: List[Relation] = []
        for rel in relations:
            if self.size(rel) >= SMALL_RELATION_BYTES:
                yield [rel]
                continue
            group.append(rel)
            if len(group) == GROUP_SIZE:
                yield group
                group = []
        if group:
            yield group

    # -- the catalog and amcheck ----------------------------------------------------------------
    def catalog(self) -> Optional[List[Relation]]:
        try:
            recovery = self.conn.execute(
                "SELECT pg_is_in_recovery(), current_setting('block_size')::int"
            ).fetchone()
            rows = self.conn.execute(CATALOG_QUERY).fetchall()
        except psycopg.Error as error:
            self.failed(error, "reading the catalog", None)
            self.incomplete(f"database {self.dbname}: the catalog could not be read")
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
            self.by_name[(rel.schema, rel.name)] = rel
            if rel.filepath:
                self.by_path[rel.filepath] = rel
        return relations

    def amcheck(self) -> Optional[Amcheck]:
        """The amcheck extension here and what it can verify (installing it when asked); None when
        it is absent or the role may not run it."""
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
            self.finding(
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
        functions = self.query(FUNCTIONS_QUERY, (schema,), step="looking for amcheck")
        if functions is None:
            return None
        if not all(allowed for _, _, allowed in functions):
            with self.lock:
                self.denied.setdefault("running the amcheck functions", []).append(self.dbname)
            return None
        version = self.conn.info.server_version
        return Amcheck.from_functions(schema, version, [(name, args) for name, args, _ in functions])

    def install_amcheck(self) -> list:
        try:
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION READ WRITE")
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg.Error as error:
            self.failed(error, "installing amcheck", None)
            return []
        self.finding(
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

    # -- the checks -----------------------------------------------------------------------------
    def batch(self, statement, params: dict, step: str, group: List[Relation]) -> Optional[list]:
        """The rows of one statement over a group, or None when it failed (the caller then checks
        each relation alone, to know which one failed and why)."""
        try:
            return self.conn.execute(statement, params).fetchall()
        except psycopg.Error as error:
            self.session_died(error, step, None, group)
            if (self.conn.closed or self.conn.broken) and not self.reconnect():
                raise DatabaseLost(server_message(error)) from error
            return None

    def check_heaps(self, statements: tuple, group: List[Relation]) -> None:
        one, many = statements
        group = [rel for rel in group if rel.oid not in self.skip_before]
        rows = (
            self.batch(many, {"oids": [rel.oid for rel in group]}, "verify_heapam", group)
            if len(group) > 1
            else None
        )
        if rows is not None:
            self.heap_results(group, rows)
            return
        for rel in group:
            found = self.query(one, {"oid": rel.oid}, step="verify_heapam", rel=rel)
            if found is not None:
                self.heap_results([rel], found)

    def heap_results(self, group: List[Relation], rows: list) -> None:
        self.count("tables_checked", len(group))
        problems: Dict[int, List[dict]] = {}
        for oid, block, offset, attribute, message in rows:
            problems.setdefault(oid, []).append(
                {"block": block, "offset": offset, "attribute": attribute, "message": message}
            )
        with self.lock:
            self.heap_verified.update(rel.oid for rel in group)
        for rel in group:
            if rel.oid in problems:
                self.table_corrupt(rel, problems[rel.oid], "verify_heapam", None)

    def skipped_oids(self) -> set:
        """Relations not worth another statement: their file is gone, or they could not be locked."""
        with self.lock:
            return {oid for code, oid in self.reported if code in ("file-missing", "timeout")}

    def damaged(self, rel: Optional[Relation]) -> bool:
        """Whether a check found the rows of `rel` (or of its TOAST table) damaged: they are not read."""
        if rel is None:
            return False
        with self.lock:
            return any(
                (code, oid) in self.reported for code in DAMAGE_CODES for oid in (rel.oid, rel.toast_oid)
            )

    def check_indexes(self, statements: tuple, group: List[Relation]) -> None:
        """Each index against itself and, unless its table was found damaged, against its table."""
        one, many = statements
        group = [rel for rel in group if rel.oid not in self.skip_before]
        whole = [not self.damaged(self.table_of(rel)) for rel in group]
        self.count("indexes_checked_without_their_table", whole.count(False))
        unique = [rel.unique for rel in group]
        params = {"oids": [rel.oid for rel in group], "heapallindexed": whole, "unique": unique}
        if len(group) > 1 and self.batch(many, params, "index check", group) is not None:
            self.count("indexes_checked", len(group))
            return
        for rel, heapallindexed in zip(group, whole):
            params = {"oid": rel.oid, "heapallindexed": heapallindexed, "unique": rel.unique}
            if self.query(one, params, step="index check", rel=rel) is not None:
                self.count("indexes_checked")

    def check_sequences(self, group: List[Relation]) -> None:
        one, many = SEQUENCE_STATEMENTS
        group = [rel for rel in group if rel.oid not in self.skip_before]
        oids = {"oids": [rel.oid for rel in group]}
        if len(group) > 1 and self.batch(many, oids, "reading the sequence", group) is not None:
            self.count("sequences_read", len(group))
            return
        for rel in group:
            if self.query(one, {"oid": rel.oid}, step="reading the sequence", rel=rel) is not None:
                self.count("sequences_read")

    def report_unverified(self, amcheck: Amcheck, unverified: Dict[str, List[Relation]]) -> None:
        """Count the indexes amcheck cannot verify here and say so, so that no one reads "nothing
        damaged" as covering them."""
        if not unverified:
            return
        total = sum(len(indexes) for indexes in unverified.values())
        self.count("indexes_not_verified", total)
        for method, indexes in unverified.items():
            self.count(f"indexes_not_verified_{method}", len(indexes))
        kinds = ", ".join(f"{method} {len(indexes)}" for method, indexes in sorted(unverified.items()))
        names = sorted(rel.qualified for indexes in unverified.values() for rel in indexes)
        self.finding(
            "indexes-not-verified",
            "info",
            f"{total} index(es) of database {self.dbname} were not verified page by page ({kinds}): amcheck "
            f"cannot check these kinds on PostgreSQL {amcheck.version // 10000}; their files were checked "
            "against the catalog",
            subject=self.subject(),
            details=self.details(
                indexes=names[:MAX_NAMES_LISTED],
                index_count=total,
                access_methods={method: len(indexes) for method, indexes in unverified.items()},
            ),
            advice="Nothing to do when the other checks are clean; to be sure after a storage incident, "
            "rebuild them (REINDEX INDEX CONCURRENTLY name;).",
        )
