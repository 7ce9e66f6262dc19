"""Relation files against the catalog: a table's, index's or sequence's file that is gone, shorter
than `relpages` says, or not a whole number of blocks, rechecked at the end so that a concurrent
TRUNCATE, VACUUM or REINDEX (which changes the catalog and the file together) is not reported."""

from __future__ import annotations

from typing import Dict, List, Optional

import psycopg

from fsaudit_checks.postgres.relation import Relation
from fsaudit_checks.postgres.session import error_kind

SEGMENT_BYTES = 1 << 30
MAX_SEGMENTS = 1 << 16


class RelationFiles:
    """The file checks of `DatabaseAudit` (which provides the session, `query`, `failed`, and the
    report's `report_missing` and `report_short`)."""

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
                self.count("file_sizes_from_the_server_databases")
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
        self.count("relation_files_checked", len(relations))

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
