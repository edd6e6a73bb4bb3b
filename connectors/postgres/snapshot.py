"""Consistent snapshots of the captured tables at a slot's consistent point.

A logical slot created with SNAPSHOT 'export' hands out a snapshot that sees
exactly the transactions committed before the slot's consistent point, and
the slot streams exactly those committed after it — so snapshot + stream see
every change once. The snapshot is imported into a REPEATABLE READ READ ONLY
transaction on a normal connection; once imported it no longer depends on
the exporting connection, which may go on to stream (initial snapshot) or
close and drop its temporary slot (scheduled snapshots).

Rows are read as text (each column cast to text runs the type's output
function, the same text pgoutput sends), so the streaming path's converters
give byte-identical JSON values for snapshot rows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from agent.events import Column, ForeignKey, Index, Position, Row, TableSchema
from connectors.postgres.replication import CreatedSlot, ReplicationConnection, lsn_to_text
from connectors.postgres.slots import TableRef

# (name, type oid, typmod) per column, and the text values of one row -> a Row.
ColumnType = tuple[str, int, int]
TextRowConverter = Callable[[TableSchema, Sequence[ColumnType], Sequence[str | None]], Row]

_ROWS_PER_FETCH = 2000
_FK_ACTIONS = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.atttypid::int8, a.atttypmod
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

PRIMARY_KEY_SQL = """
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s::oid AND i.indisprimary
ORDER BY k.ord
"""

_FOREIGN_KEYS_SQL = """
SELECT c.conname, rn.nspname, rc.relname, c.confdeltype::text,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_constraint c
JOIN pg_class rc ON rc.oid = c.confrelid
JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE c.conrelid = %s::oid AND c.contype = 'f'
ORDER BY c.conname
"""

# Plain-column indexes only: an expression index has no column list to restore.
_INDEXES_SQL = """
SELECT ic.relname, i.indisunique,
       ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %s::oid AND NOT i.indisprimary AND i.indexprs IS NULL
  AND i.indpred IS NULL AND 0 <> ALL (i.indkey)
ORDER BY ic.relname
"""


def read_table_schema(conn: psycopg.Connection[Any], table: TableRef) -> TableSchema:
    """A table's definition from the catalogs (as seen by this connection's snapshot)."""
    cols = conn.execute(_COLUMNS_SQL, (table.relid,)).fetchall()
    pkey = [r[0] for r in conn.execute(PRIMARY_KEY_SQL, (table.relid,)).fetchall()]
    fks = [
        ForeignKey(r[0], tuple(r[4]), r[1], r[2], tuple(r[5]), _FK_ACTIONS.get(r[3], "NO ACTION"))
        for r in conn.execute(_FOREIGN_KEYS_SQL, (table.relid,)).fetchall()
    ]
    idx = [
        Index(r[0], tuple(r[2]), bool(r[1]))
        for r in conn.execute(_INDEXES_SQL, (table.relid,)).fetchall()
    ]
    return TableSchema(
        schema=table.schema,
        table=table.name,
        columns=tuple(Column(r[0], r[1], not r[2], r[3]) for r in cols),
        primary_key=tuple(pkey),
        foreign_keys=tuple(fks),
        indexes=tuple(idx),
    )


class PgSnapshotReader:
    """connectors.base.SnapshotReader over an exported snapshot.

    `held_xmin` (the transaction horizon this reader holds back on the server)
    and `duration_seconds` are exposed for metrics.
    """

    def __init__(
        self,
        dsn: str,
        params: dict[str, Any],
        slot: CreatedSlot,
        tables: Sequence[TableRef],
        convert: TextRowConverter,
    ) -> None:
        if slot.snapshot_name is None:
            raise ValueError("the slot was created without an exported snapshot")
        # The snapshot holds every transaction committed before the consistent
        # point P; a commit record may start exactly at P and is not in it. So
        # sort_key is P - 1 (the archive's rule: a transaction is after a
        # snapshot iff its sort_key is greater), and streaming resumes at P.
        point = slot.consistent_point
        self.position = Position(
            lsn_to_text(point), (point - 1,), (("end_lsn", lsn_to_text(point)),)
        )
        self.snapshot_id = f"{lsn_to_text(slot.consistent_point)}-{uuid.uuid4().hex[:8]}"
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        self._convert = convert
        self._refs = list(tables)
        self._conn = psycopg.connect(dsn, **params)
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        # Must be the first statement of the transaction.
        self._conn.execute(
            sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(slot.snapshot_name))
        )
        row = self._conn.execute(
            "SELECT backend_xmin::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        self.held_xmin: int | None = int(row[0]) if row and row[0] else None
        self._schemas: dict[int, TableSchema] = {}
        self._types: dict[int, list[ColumnType]] = {}
        self._closed = False

    @property
    def duration_seconds(self) -> float:
        return time.monotonic() - self._started

    def tables(self) -> list[TableSchema]:
        out = []
        for ref in self._refs:
            if ref.relid not in self._schemas:
                self._schemas[ref.relid] = read_table_schema(self._conn, ref)
                rows = self._conn.execute(_COLUMNS_SQL, (ref.relid,)).fetchall()
                self._types[ref.relid] = [(r[0], int(r[4]), int(r[5])) for r in rows]
            out.append(self._schemas[ref.relid])
        return out

    def _ref_for(self, table: TableSchema) -> TableRef:
        for ref in self._refs:
            if ref.schema == table.schema and ref.name == table.table:
                return ref
        raise ValueError(f"{table.qualified} is not part of this snapshot")

    def rows(self, table: TableSchema) -> Iterator[Row]:
        """Rows through a server-side cursor: memory bounded by one fetch."""
        ref = self._ref_for(table)
        if ref.relid not in self._types:
            self.tables()
        types = self._types[ref.relid]
        # ONLY for plain tables: inheritance children are captured on their own;
        # a partitioned root must include its partitions.
        only = sql.SQL("ONLY ") if ref.relkind == "r" else sql.SQL("")
        query = sql.SQL("SELECT {} FROM {}{}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c[0])) for c in types),
            only,
            sql.Identifier(ref.schema, ref.name),
        )
        with self._conn.cursor(name=f"cv_snap_{ref.relid}") as cur:
            cur.itersize = _ROWS_PER_FETCH
            cur.execute(query)
            for values in cur:
                yield self._convert(table, types, values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.rollback()
        finally:
            self._conn.close()


def open_scheduled_snapshot(
    dsn: str,
    params: dict[str, Any],
    tables: Sequence[TableRef],
    convert: TextRowConverter,
) -> PgSnapshotReader:
    """A snapshot while the main stream continues: a TEMPORARY slot's export.

    The temporary slot's consistent point is exactly the snapshot's position
    (commit visibility order differs from WAL order, so pg_current_wal_lsn()
    beside pg_export_snapshot() would not be one). The slot is dropped as soon
    as the snapshot is imported, so it holds no WAL while rows are copied.
    """
    repl = ReplicationConnection(dsn, params)
    try:
        name = f"changevault_snap_{uuid.uuid4().hex[:12]}"
        created = repl.create_slot(name, temporary=True, export_snapshot=True)
        return PgSnapshotReader(dsn, params, created, tables, convert)
    finally:
        repl.close()
