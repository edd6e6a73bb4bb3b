"""A consistent snapshot of the captured tables at an exact binlog position.

MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT`, then, inside it, the
`binlog_snapshot_file` / `binlog_snapshot_position` status values, which the
server freezes at the snapshot's point in the binlog; `BINLOG_GTID_POS()` turns
them into the GTID state (`@@gtid_binlog_pos` would be the current global
value, not the snapshot's). MySQL has no such status: the standard brief lock
(`FLUSH TABLES WITH READ LOCK`, needs RELOAD) holds commits while the snapshot
starts and `SHOW MASTER STATUS` is read, then `UNLOCK TABLES`.

Rows are read through an unbuffered cursor (pymysql SSCursor), so memory stays
bounded whatever the table size, and their text values are converted to the
same JSON as the binlog decoder produces.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pymysql
import pymysql.converters
import pymysql.cursors

from agent.errors import ServiceError, UsageError
from agent.events import Column, ForeignKey, Index, Position, Row, TableSchema
from connectors.mysql.binlog_reader import make_position
from connectors.mysql.connection import connect, quote_identifier
from connectors.mysql.gtid import MariaDBGtidList, MySQLGtidSet, parse_gtid_state
from connectors.mysql.schema_history import SchemaHistory
from connectors.mysql.types import float32

_INTS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry",
           "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
           "geometrycollection"}


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes | bytearray) else str(v)


def _is_zero_date(s: str) -> bool:
    date = s[:10]
    return date.startswith("0000") or "-00" in date


def _column_default(default: Any, extra: Any) -> str | None:
    """The column default as restore needs it; AUTO_INCREMENT is recorded there too."""
    if "auto_increment" in _text(extra or "").lower():
        return "auto_increment"
    return None if default is None else _text(default)


def value_converter(data_type: str, is_json: bool) -> Callable[[Any], Any]:
    """Text-protocol value -> the JSON value the binlog decoder emits for the same column."""
    dtype = data_type.lower()
    if is_json or dtype == "json":
        return lambda v: json.loads(_text(v))
    if dtype in _INTS:
        return lambda v: int(v)
    if dtype == "bit":
        return lambda v: int.from_bytes(v, "big")
    if dtype == "decimal":
        return _text
    if dtype == "float":
        return lambda v: float32(float(v))
    if dtype in ("double", "real"):
        return lambda v: float(v)
    if dtype == "date":
        return lambda v: None if _is_zero_date(s := _text(v)) else s
    if dtype == "datetime":
        return lambda v: None if _is_zero_date(s := _text(v)) else s.replace(" ", "T")
    if dtype == "timestamp":
        return lambda v: None if _is_zero_date(s := _text(v)) else s.replace(" ", "T") + "+00:00"
    if dtype == "time":
        return _text
    if dtype in _BINARY:
        return lambda v: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
    return lambda v: v if isinstance(v, str) else _text(v)


class MySQLSnapshot:
    """SnapshotReader over one connection holding the consistent-snapshot transaction."""

    def __init__(self, conn_kwargs: dict[str, Any], mariadb: bool,
                 table_names: Callable[[pymysql.connections.Connection[Any]],
                                       list[tuple[str, str]]],
                 history: SchemaHistory) -> None:
        # Keep the parameter encoders, drop the result decoders: values arrive as the
        # server's text (exact decimals, fsp digits) and are converted here.
        encoders = {k: v for k, v in pymysql.converters.conversions.items()
                    if not isinstance(k, int)}
        kwargs = dict(conn_kwargs, conv=encoders, cursorclass=pymysql.cursors.SSCursor,
                      autocommit=False)
        self._conn = connect(kwargs, "the snapshot")
        self._history = history
        self._json: dict[tuple[str, str], frozenset[str]] = {}
        self._types: dict[tuple[str, str], dict[str, str]] = {}
        self.snapshot_id = uuid.uuid4().hex
        self.started_at = datetime.now(UTC)
        try:
            self._execute("SET SESSION time_zone = '+00:00'")
            self._execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.position = self._begin_mariadb() if mariadb else self._begin_mysql()
            self._names = table_names(self._conn)
            self._schemas: list[TableSchema] | None = None
        except pymysql.err.MySQLError as exc:
            self._conn.close()
            raise ServiceError(
                f"could not start the snapshot transaction: {exc.args[-1]}") from None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._conn.cursor(pymysql.cursors.Cursor) as cur:
            cur.execute(sql, args or None)  # None: a literal % in LIKE is not a placeholder
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def _begin_mariadb(self) -> Position:
        self._execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        status = {_text(k).lower(): _text(v) for k, v in self._execute(
            "SHOW STATUS LIKE 'binlog_snapshot_%'")}
        file = status.get("binlog_snapshot_file", "")
        pos = int(status.get("binlog_snapshot_position", "0") or 0)
        if not file:
            raise ServiceError("expected binlog_snapshot_file in SHOW STATUS, found none "
                               "(is log_bin enabled?)")
        rows = self._execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        gtid = _text(rows[0][0]) if rows and rows[0][0] is not None else ""
        return make_position(parse_gtid_state(gtid) if gtid else MariaDBGtidList(), file, pos)

    def _begin_mysql(self) -> Position:
        # The brief lock: commits wait while the snapshot starts and the position is read.
        self._execute("FLUSH TABLES WITH READ LOCK")
        try:
            self._execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                rows = self._execute("SHOW BINARY LOG STATUS")
            except pymysql.err.MySQLError:
                rows = self._execute("SHOW MASTER STATUS")
        finally:
            self._execute("UNLOCK TABLES")
        if not rows:
            raise ServiceError("expected a binlog position from SHOW MASTER STATUS, found none")
        file, pos = _text(rows[0][0]), int(rows[0][1])
        gtid = _text(rows[0][4]) if len(rows[0]) > 4 and rows[0][4] else ""
        return make_position(parse_gtid_state(gtid) if gtid else MySQLGtidSet(), file, pos)

    # ------------------------------------------------------------- SnapshotReader

    def tables(self) -> list[TableSchema]:
        if self._schemas is None:
            self._schemas = [self._describe(db, t) for db, t in self._names]
        return list(self._schemas)

    def _describe(self, db: str, table: str) -> TableSchema:
        cols = self._execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, DATA_TYPE, EXTRA "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s "
            "ORDER BY ORDINAL_POSITION", (db, table))
        if not cols:
            raise UsageError(f"source.tables: expected table {db}.{table} to exist, found none")
        checks = self._execute(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA=%s AND TABLE_NAME=%s", (db, table)
        ) if self._has_checks() else []
        clauses = " ".join(_text(c[0]).lower() for c in checks)
        json_cols = frozenset(
            _text(c[0]) for c in cols
            if _text(c[4]).lower() == "json" or (
                _text(c[4]).lower() == "longtext"
                and f"json_valid(`{_text(c[0]).lower()}`)" in clauses))
        stats = self._execute(
            "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (db, table))
        indexes: dict[str, tuple[list[str], bool]] = {}
        for name, col, non_unique in stats:
            entry = indexes.setdefault(_text(name), ([], int(non_unique) == 0))
            entry[0].append(_text(col))
        pk = tuple(indexes.pop("PRIMARY", ([], True))[0])
        fks_raw = self._execute(
            "SELECT k.CONSTRAINT_NAME, k.COLUMN_NAME, k.REFERENCED_TABLE_SCHEMA, "
            "k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME, r.DELETE_RULE "
            "FROM information_schema.KEY_COLUMN_USAGE k JOIN "
            "information_schema.REFERENTIAL_CONSTRAINTS r ON r.CONSTRAINT_SCHEMA = "
            "k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME AND "
            "r.TABLE_NAME = k.TABLE_NAME WHERE k.TABLE_SCHEMA=%s AND k.TABLE_NAME=%s AND "
            "k.REFERENCED_TABLE_NAME IS NOT NULL ORDER BY k.CONSTRAINT_NAME, "
            "k.ORDINAL_POSITION", (db, table))
        fks: dict[str, tuple[list[str], str, str, list[str], str]] = {}
        for name, col, rdb, rtable, rcol, rule in fks_raw:
            f = fks.setdefault(_text(name), ([], _text(rdb), _text(rtable), [], _text(rule)))
            f[0].append(_text(col))
            f[3].append(_text(rcol))
        self._json[db, table] = json_cols
        self._types[db, table] = {_text(c[0]): _text(c[4]) for c in cols}
        schema = TableSchema(
            schema=db, table=table,
            columns=tuple(Column(_text(c[0]), "json" if _text(c[0]) in json_cols else _text(c[1]),
                                 _text(c[2]) == "YES", _column_default(c[3], c[5]))
                          for c in cols),
            primary_key=pk,
            foreign_keys=tuple(ForeignKey(n, tuple(f[0]), f[1], f[2], tuple(f[3]), f[4])
                               for n, f in fks.items()),
            indexes=tuple(Index(n, tuple(c), u) for n, (c, u) in indexes.items()),
        )
        return self._history.record_snapshot(schema, json_cols, self.position.sort_key)

    def _has_checks(self) -> bool:
        rows = self._execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
            "'information_schema' AND TABLE_NAME = 'CHECK_CONSTRAINTS'")
        return bool(rows and int(rows[0][0]))

    def rows(self, table: TableSchema) -> Iterator[Row]:
        key = (table.schema, table.table)
        if key not in self._types:
            self._describe(*key)
        types, json_cols = self._types[key], self._json[key]
        names = table.column_names
        convert = [value_converter(types[n], n in json_cols) for n in names]
        # FLOAT's text form has 6 digits; read it as DOUBLE so the snapshot
        # carries the same value the binlog does.
        sql = "SELECT {} FROM {}.{}".format(
            ", ".join(
                f"CAST({quote_identifier(n)} AS DOUBLE)" if types[n].lower() == "float"
                else quote_identifier(n)
                for n in names
            ),
            quote_identifier(table.schema), quote_identifier(table.table))
        with self._conn.cursor() as cur:
            cur.execute(sql)
            for raw in cur.fetchall_unbuffered():
                yield {n: None if v is None else f(v)
                       for n, v, f in zip(names, raw, convert, strict=True)}

    def close(self) -> None:
        with contextlib.suppress(pymysql.err.MySQLError):
            self._conn.rollback()
        self._conn.close()
