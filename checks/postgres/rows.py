"""The rows of one database's tables: counted (or read in full) against the statistics, and the
rows a damaged commit log hides, found in the tables' own pages.

A table is read only after `verify_heapam` found it sound (`DatabaseAudit` orders the tasks so): a
damaged row can crash the server when it is read, which drops every client of the server.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import psycopg
from psycopg import sql

from fsaudit_checks.postgres.commitlog import PAGE_BYTES, XID_SPACE, hidden_in_page, precedes, spans
from fsaudit_checks.postgres.files import SEGMENT_BYTES
from fsaudit_checks.postgres.relation import ADVICE, Relation
from fsaudit_checks.postgres.report import MAX_NAMES_LISTED

# How much of the tables' files the search for rows hidden by a damaged commit log reads per database.
COMMIT_LOG_SCAN_BYTES = 4 << 30
SCAN_CHUNK = 1 << 20


class RowChecks:
    """The row checks of `DatabaseAudit` (which provides the session, the report and the sets of
    tables verified, damaged and hidden)."""

    def wants_rows(self, rel: Relation) -> bool:
        """Whether the rows of `rel` are counted (or read): tables whose statistics expect enough rows
        to notice a loss, every table with `full_read`."""
        if rel.kind not in ("r", "m"):
            return False
        if self.settings.get("full_read"):
            return True
        return self.estimate(rel) >= int(self.settings["row_loss_min"])

    def check_rows(self, rel: Relation) -> None:
        """Count the rows of a table (reading every value with `full_read`) and compare with the
        statistics: rows that vanish without an error (a zeroed pg_xact) show only here. A table
        found damaged is not read at all."""
        if rel.oid in self.skipped_oids():
            return
        if self.damaged(rel):
            self.count("tables_not_read_damaged")
            return
        full_read = bool(self.settings.get("full_read"))
        if full_read and self.heap_available and rel.oid not in self.heap_verified:
            full_read = False
        elif full_read and not self.heap_available:
            full_read = False
            self.count("tables_not_read_unverified")
            self.incomplete(
                f"database {self.dbname}: tables were counted, not read in full: verify_heapam could not "
                "check them first (a damaged row can crash the server when it is read)"
            )
        minimum = int(self.settings["row_loss_min"])
        # A table whose file lost blocks lost their rows too: that finding says why; so does the
        # damaged commit log for the rows it hides.
        with self.lock:
            explained = ("file-short", rel.oid) in self.reported or rel.oid in self.hidden_tables
        estimate = 0 if explained else self.estimate(rel)
        if not full_read and estimate < minimum and not self.settings.get("full_read"):
            return
        rows = self.read_table(rel) if full_read else self.count_table(rel)
        if rows is None:
            return
        self.count("rows_counted", rows)
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
        self.count("tables_read")
        return max(count, 0)

    # -- rows a damaged commit log hides --------------------------------------------------------
    def commit_log_rows(self, relations: List[Relation]) -> None:
        """Find, in the pages of the tables (read as files through the server, which sets no hint
        bits), the rows inserted by transactions on the damaged commit-log pages; report each
        damaged file with the tables whose rows it hides."""
        last = max(page.last for page in self.damaged_pages) % XID_SPACE
        hidden: Dict[str, Dict[int, int]] = {}
        by_oid = {rel.oid: rel for rel in relations}
        budget = COMMIT_LOG_SCAN_BYTES
        for rel in relations:
            if rel.kind not in ("r", "m") or not rel.filepath or not rel.size:
                continue
            # Every transaction id in a table is at or after its relfrozenxid.
            if rel.frozenxid is not None and precedes(last, rel.frozenxid):
                continue
            if rel.size > budget:
                self.incomplete(
                    f"database {self.dbname}: some tables were not searched for rows hidden by the damaged "
                    "commit log (too much to read)"
                )
                break
            budget -= rel.size
            self.count("commit_log_tables_searched")
            for path, count in (self.hidden_rows(rel) or {}).items():
                hidden.setdefault(path, {})[rel.oid] = count
        for path, counts in sorted(hidden.items()):
            self.report_commit_log(path, [(by_oid[oid], count) for oid, count in counts.items()])

    def hidden_rows(self, rel: Relation) -> Optional[Dict[str, int]]:
        """Rows of `rel` hidden by the damaged pages, by commit-log file; None when unreadable."""
        found: Dict[str, int] = {}
        offset = 0
        while offset < rel.size:
            segment, within = divmod(offset, SEGMENT_BYTES)
            path = rel.filepath if segment == 0 else f"{rel.filepath}.{segment}"
            length = min(SCAN_CHUNK, SEGMENT_BYTES - within, rel.size - offset)
            rows = self.query(
                "SELECT pg_read_binary_file(%s, %s, %s, true)",
                (path, within, length),
                step="looking for rows hidden by the commit log",
                rel=rel,
            )
            if rows is None or rows[0][0] is None:
                return None
            data = bytes(rows[0][0])
            for start in range(0, len(data) - PAGE_BYTES + 1, PAGE_BYTES):
                for where, count in hidden_in_page(
                    data[start : start + PAGE_BYTES], self.damaged_pages
                ).items():
                    found[where] = found.get(where, 0) + count
            if len(data) < length:
                break
            offset += length
        return found

    def report_commit_log(self, path: str, tables: List[Tuple[Relation, int]]) -> None:
        pages = [page for page in self.damaged_pages if page.path == path]
        rows = sum(count for _, count in tables)
        ranked = sorted(tables, key=lambda item: (-item[1], item[0].qualified))
        self.count("rows_hidden_by_commit_log", rows)
        with self.lock:
            self.hidden_tables.update(rel.oid for rel, _ in ranked)
        named = ", ".join(f"{rel.qualified} ({count:,})" for rel, count in ranked[:MAX_NAMES_LISTED])
        covered = spans(pages)
        which = ", ".join(f"{first} to {last}" for first, last in covered)
        if all(page.gone for page in pages):
            what = f"the commit log file {path} is gone: the outcome of transactions {which} is lost"
        else:
            what = (
                f"the commit log {path} lost the outcome of transactions {which}: it reads 'in progress' for "
                "every one of them although all ended long ago"
            )
        self.claim(("commit-log-damaged", path))
        self.finding(
            "commit-log-damaged",
            "critical",
            f"{what}, so {rows:,} rows they wrote are invisible: {named}",
            subject=f"{self.place.cluster} {path}",
            path=self.place.file_path(path),
            details=self.details(
                segment=path,
                transactions=[{"first": first, "last": last} for first, last in covered],
                file_gone=all(page.gone for page in pages),
                hidden_rows=rows,
                tables=[
                    {"table": rel.qualified, "hidden_rows": count} for rel, count in ranked[:MAX_NAMES_LISTED]
                ],
                table_count=len(ranked),
            ),
            advice=ADVICE["commit-log-damaged"].format(
                tables=", ".join(rel.qualified for rel, _ in ranked[:MAX_NAMES_LISTED]), file=path
            ),
            key=("commit-log-damaged", path),
        )
