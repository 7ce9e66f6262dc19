"""Which amcheck functions a database offers, by server version, and the statements that call them.

- every version with amcheck: `bt_index_check(index, heapallindexed)` for btree indexes;
- PostgreSQL 14+: `verify_heapam` for tables, materialized views, TOAST tables;
- PostgreSQL 17+ (amcheck 1.4): `bt_index_check(index, heapallindexed, checkunique)`, which also finds
  duplicates in a unique index (a lost write can bring back an old row beside its new version);
- PostgreSQL 18+ (amcheck 1.5): `gin_index_check(index)`.
Other index kinds (hash, gist, spgist, brin; gin before 18) are not verified page by page: the audit
counts them, so that "nothing damaged" is never said of them.

The functions are taken from the catalog, not only the version: an extension left at an older version
after a server upgrade lacks the newer ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from psycopg import sql

CHECKUNIQUE_SINCE = 170000
GIN_SINCE = 180000
FUNCTIONS_QUERY = (
    "SELECT p.proname, p.proargnames, has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p"
    " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s"
    " AND p.proname IN ('bt_index_check', 'verify_heapam', 'gin_index_check')"
)


@dataclass(frozen=True)
class Amcheck:
    """The amcheck of one database: its schema and what it can verify there."""

    schema: str
    version: int
    heap: bool = False
    checkunique: bool = False
    gin: bool = False

    @classmethod
    def from_functions(
        cls, schema: str, version: int, functions: Iterable[Tuple[str, Optional[Sequence[str]]]]
    ) -> Amcheck:
        """From (function name, argument names) of the extension's functions."""
        found: Dict[str, List[Sequence[str]]] = {}
        for name, arguments in functions:
            found.setdefault(name, []).append(arguments or ())
        return cls(
            schema=schema,
            version=version,
            heap="verify_heapam" in found,
            checkunique=version >= CHECKUNIQUE_SINCE
            and any("checkunique" in arguments for arguments in found.get("bt_index_check", [])),
            gin=version >= GIN_SINCE and "gin_index_check" in found,
        )

    def verifies(self, access_method: Optional[str]) -> bool:
        """Whether indexes of this access method are verified page by page."""
        return access_method == "btree" or (access_method == "gin" and self.gin)

    def index_statements(self, access_method: str) -> Tuple[sql.Composed, sql.Composed]:
        """(one index, many indexes) for indexes of `access_method`. The statements take named
        parameters: oid, heapallindexed, unique (one); oids, heapallindexed, unique (arrays, many)."""
        schema = sql.Identifier(self.schema)
        if access_method == "gin":
            one = sql.SQL("SELECT {}.gin_index_check(%(oid)s::oid::regclass)").format(schema)
            many = sql.SQL(
                "SELECT {}.gin_index_check(u.oid::regclass) FROM unnest(%(oids)s::oid[]) AS u(oid)"
            ).format(schema)
            return one, many
        if self.checkunique:
            one = sql.SQL(
                "SELECT {}.bt_index_check(%(oid)s::oid::regclass, %(heapallindexed)s::bool, %(unique)s::bool)"
            ).format(schema)
            many = sql.SQL(
                "SELECT {}.bt_index_check(u.oid::regclass, u.heap, u.uniq)"
                " FROM unnest(%(oids)s::oid[], %(heapallindexed)s::bool[], %(unique)s::bool[])"
                " AS u(oid, heap, uniq)"
            ).format(schema)
            return one, many
        one = sql.SQL("SELECT {}.bt_index_check(%(oid)s::oid::regclass, %(heapallindexed)s::bool)").format(
            schema
        )
        many = sql.SQL(
            "SELECT {}.bt_index_check(u.oid::regclass, u.heap)"
            " FROM unnest(%(oids)s::oid[], %(heapallindexed)s::bool[]) AS u(oid, heap)"
        ).format(schema)
        return one, many

    def heap_statements(self) -> Tuple[sql.Composed, sql.Composed]:
        """(one table, many tables) for verify_heapam; parameters oid (one), oids (many)."""
        schema = sql.Identifier(self.schema)
        one = sql.SQL(
            "SELECT %(oid)s::oid, blkno, offnum, attnum, msg FROM {}.verify_heapam(%(oid)s::oid::regclass,"
            " on_error_stop => false, check_toast => true, skip => 'none')"
        ).format(schema)
        many = sql.SQL(
            "SELECT u.oid, v.blkno, v.offnum, v.attnum, v.msg FROM unnest(%(oids)s::oid[]) AS u(oid)"
            " CROSS JOIN LATERAL {}.verify_heapam(u.oid::regclass, on_error_stop => false,"
            " check_toast => true, skip => 'none') v"
        ).format(schema)
        return one, many
