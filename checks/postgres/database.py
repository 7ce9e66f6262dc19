"""The checks of one database: files against the catalog, amcheck, row counts, full reads.

Only AccessShareLocks are taken (plain reads, `bt_index_check`, `verify_heapam`), which never block
writers; nothing is created unless `install_amcheck` is set.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import psycopg
from psycopg import sql

from fsaudit_checks.postgres.parallel import (
    PHASE_DENIED,
    PHASE_FILES,
    PHASE_HEAPS,
    PHASE_INDEXES,
    PHASE_RECHECK,
    PHASE_ROWS,
    Slots,
    Task,
    run_tasks,
)
from fsaudit_checks.postgres.report import ADVICE, DatabaseLost, DatabaseReport, Relation
from fsaudit_checks.postgres.session import connect, error_kind, server_message

SEGMENT_BYTES = 1 << 30
MAX_SEGMENTS = 1 << 16
# Relations smaller than this are checked GROUP_SIZE at a time, in one statement.
SMALL_RELATION_BYTES = 1 << 20
GROUP_SIZE = 50
# What reading a byte costs, against `verify_heapam` or a row count (1), measured on pgbench tables:
# `heapallindexed` hashes every index entry and every row of the table; a full read detoasts and
# formats every value.
HEAPALLINDEXED_COST = 4
READ_COST = 3

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


class DatabaseAudit(DatabaseReport):
    """Every check of one database. The per-relation checks (amcheck of each table and index, the row
    counts, the full reads) run on this connection and, while the cluster's connection budget has
    free slots, on helper connections too (`postgres_parallel`), the biggest relations first."""

    def __init__(self, *args, slots: Optional[Slots] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = slots or Slots(1)
        self.skip_before: set = set()

    def run(self) -> None:
        try:
            self.conn = connect(self.conninfo, self.dbname, self.settings)
        except psycopg.Error as error:
            self.connection_failed(error)
            self.flush()
            return
        try:
            self.audit()
        finally:
            self.conn.close()
            self.flush()

    def audit(self) -> None:
        self.rank = (PHASE_FILES, 0)
        relations = self.catalog()
        if relations is None:
            return
        self.events.count("databases_checked")
        self.check_files(relations)
        amcheck = self.amcheck_schema()
        heap_check = amcheck is not None and self.has_function(amcheck, "verify_heapam")
        if amcheck is not None and not heap_check:
            self.events.count("heap_check_unavailable_databases")
        # What the files already showed gone or unlockable; the parallel checks skip on this alone,
        # not on what another connection happens to find first, so the report does not depend on
        # timing.
        self.skip_before = self.skipped_oids()
        deferred = set(self.file_candidates)
        tasks = self.table_tasks(relations, amcheck if heap_check else None, deferred)
        if amcheck is not None:
            tasks += self.index_tasks(amcheck, relations)
        run_tasks(self, tasks)
        self.rank = (PHASE_RECHECK, 0)
        self.recheck_files(relations)
        # A table whose file may have lost blocks is counted only once the recheck said so or not.
        for position, rel in enumerate(relations):
            if rel.oid in deferred:
                self.rank = (PHASE_ROWS, position)
                self.check_rows(rel)
        self.rank = (PHASE_DENIED, 0)
        self.report_denied()

    def table_tasks(self, relations: List[Relation], schema: Optional[str], deferred: set) -> List[Task]:
        """One task per group of tables: `verify_heapam` of the group (with `schema`), then the row
        count (or full read) of each table of the group, on the same connection, in that order."""
        position = {rel.oid: index for index, rel in enumerate(relations)}
        tables = [rel for rel in relations if rel.kind in ("r", "m", "t")]
        statements = self.heap_statements(schema) if schema else None
        tasks = []
        for group in self.groups(tables):
            counted = [rel for rel in group if rel.oid not in deferred and self.wants_rows(rel)]
            if statements is None and not counted:
                continue
            cost = sum(self.size(rel) for rel in group) if statements else 0
            cost += sum(self.size(rel) for rel in counted) * (
                READ_COST if self.settings.get("full_read") else 1
            )

            def work(group=group, counted=counted) -> None:
                if statements is not None:
                    self.check_heaps(statements, group)
                for rel in counted:
                    self.rank = (PHASE_ROWS, position[rel.oid])
                    self.check_rows(rel)

            tasks.append(Task(cost, PHASE_HEAPS, position[group[0].oid], work))
        return tasks

    def index_tasks(self, schema: str, relations: List[Relation]) -> List[Task]:
        """One task per group of btree indexes; `heapallindexed` reads the whole table too."""
        position = {rel.oid: index for index, rel in enumerate(relations)}
        tables = {(rel.schema, rel.name): rel for rel in relations if not rel.is_index}
        statements = self.index_statements(schema)
        indexes = []
        for rel in relations:
            if rel.is_index and rel.access_method == "btree":
                if rel.usable:
                    indexes.append(rel)
                else:
                    self.events.count("indexes_not_valid_skipped")
        tasks = []
        for group in self.groups(indexes):
            cost = 0
            for rel in group:
                table = tables.get((rel.owner_schema, rel.owner_name))
                cost += self.size(rel) + (self.size(table) * HEAPALLINDEXED_COST if table else 0)
            tasks.append(
                Task(
                    cost,
                    PHASE_INDEXES,
                    position[group[0].oid],
                    lambda group=group: self.check_indexes(statements, group),
                )
            )
        return tasks

    def size(self, rel: Relation) -> int:
        return rel.size if rel.size is not None else rel.pages * self.block_size

    def wants_rows(self, rel: Relation) -> bool:
        """Whether the rows of `rel` are counted (or read): tables whose statistics expect enough rows
        to notice a loss, every table with `full_read`."""
        if rel.kind not in ("r", "m"):
            return False
        if self.settings.get("full_read"):
            return True
        return self.estimate(rel) >= int(self.settings["row_loss_min"])

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
        allowed = self.query(
            "SELECT has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p JOIN pg_namespace n"
            " ON n.oid = p.pronamespace WHERE n.nspname = %s"
            " AND p.proname IN ('bt_index_check', 'verify_heapam')",
            (schema,),
            step="looking for amcheck",
        )
        if allowed and not all(row[0] for row in allowed):
            with self.lock:
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
            if self.size(rel) >= SMALL_RELATION_BYTES:
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
                raise DatabaseLost(server_message(error)) from error
            return None

    @staticmethod
    def heap_statements(schema: str) -> tuple:
        one = sql.SQL(
            "SELECT %s::oid, blkno, offnum, attnum, msg FROM {}.verify_heapam(%s::oid::regclass,"
            " on_error_stop => false, check_toast => true, skip => 'none')"
        ).format(sql.Identifier(schema))
        many = sql.SQL(
            "SELECT u.oid, v.blkno, v.offnum, v.attnum, v.msg FROM unnest(%s::oid[]) AS u(oid)"
            " CROSS JOIN LATERAL {}.verify_heapam(u.oid::regclass, on_error_stop => false,"
            " check_toast => true, skip => 'none') v"
        ).format(sql.Identifier(schema))
        return one, many

    def check_heaps(self, statements: tuple, group: List[Relation]) -> None:
        one, many = statements
        group = [rel for rel in group if rel.oid not in self.skip_before]
        rows = self.batch(many, [rel.oid for rel in group]) if len(group) > 1 else None
        if rows is not None:
            self.heap_results(group, rows)
            return
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
        with self.lock:
            return {oid for code, oid in self.reported if code in ("file-missing", "timeout")}

    @staticmethod
    def index_statements(schema: str) -> tuple:
        one = sql.SQL("SELECT {}.bt_index_check(%s::oid::regclass, true)").format(sql.Identifier(schema))
        many = sql.SQL(
            "SELECT {}.bt_index_check(u.oid::regclass, true) FROM unnest(%s::oid[]) AS u(oid)"
        ).format(sql.Identifier(schema))
        return one, many

    def check_indexes(self, statements: tuple, group: List[Relation]) -> None:
        one, many = statements
        group = [rel for rel in group if rel.oid not in self.skip_before]
        if len(group) > 1 and self.batch(many, [rel.oid for rel in group]) is not None:
            self.events.count("indexes_checked", len(group))
            return
        for rel in group:
            if self.query(one, (rel.oid,), step="bt_index_check", rel=rel) is not None:
                self.events.count("indexes_checked")

    def check_rows(self, rel: Relation) -> None:
        """Count the rows of a table (reading every value with `full_read`) and compare with the
        statistics: rows that vanish without an error (a zeroed pg_xact) show only here."""
        if rel.oid in self.skipped_oids():
            return
        full_read = bool(self.settings.get("full_read"))
        minimum = int(self.settings["row_loss_min"])
        # A table whose file lost blocks lost their rows too: that finding says why.
        with self.lock:
            shortened = ("file-short", rel.oid) in self.reported
        estimate = 0 if shortened else self.estimate(rel)
        if not full_read and estimate < minimum:
            return
        rows = self.read_table(rel) if full_read else self.count_table(rel)
        if rows is None:
            return
        self.events.count("rows_counted", rows)
        lost = estimate - rows
        if lost >= minimum and lost >= estimate * float(self.settings["row_loss_ratio"]):
            self.finding(
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
