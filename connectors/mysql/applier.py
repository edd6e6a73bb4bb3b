"""The MySQL/MariaDB Applier: restored tables into a new database, read back as JSON.

Values arrive as CONTRACT.md JSON values (what connectors/mysql/types.py
emits) and go back to each type's input form: base64 to bytes, TIMESTAMP
instants to UTC wall-clock text under `time_zone = '+00:00'`, YEAR as four
digits, zero dates (emitted as null) back to zero dates where the column is
NOT NULL. Rows are loaded with LOAD DATA LOCAL INFILE from temporary
tab-separated chunks when the server allows it (`local_infile=ON`), else
with large multi-row INSERTs (see docs/restore-mysql.md for both speeds).

Reading back uses the snapshot's own text-protocol converters
(connectors.mysql.snapshot.value_converter) under the same session settings,
FLOAT through a DOUBLE cast (the text protocol prints 6 digits), so a
restored value reads back exactly as the archive holds it.

`--preview` and `--in-place` read the source-named tables through the same
converters inside one InnoDB transaction (rows locked FOR UPDATE in place)
and write only the rows that differ, with bound parameters
(connectors.mysql.inplace_sql builds the statements).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.converters
import pymysql.cursors

from agent.errors import DecodeError, ServiceError, UsageError
from agent.events import Column, TableSchema
from connectors.base import RestoreRows, RowChanges, RowMatch
from connectors.mysql.connection import quote_identifier as q
from connectors.mysql.ddl import base_type, foreign_key_ddl, table_ddl
from connectors.mysql.inplace_sql import (
    TargetColumns,
    exact_filter,
    is_constraint_error,
    match_chunks,
    match_converter,
    probe_table,
    qp,
    referencing_fks,
    target_columns,
    write_rows,
)
from connectors.mysql.snapshot import value_converter
from connectors.mysql.types import float32

log = logging.getLogger(__name__)

Method = Literal["auto", "load_data", "insert"]
Convert = Callable[[Any], Any]

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_SESSION = (
    # Strict: a value the column cannot hold fails instead of being truncated.
    # NO_AUTO_VALUE_ON_ZERO: a restored 0 in an AUTO_INCREMENT column stays 0.
    # No NO_ZERO_DATE: zero dates are valid input (NOT NULL columns need them).
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'",
    "SET SESSION time_zone = '+00:00'",
    # Foreign keys are added after every table is loaded; rows come from one
    # consistent log prefix, and verification reads everything back.
    "SET SESSION foreign_key_checks = 0",
)
_F32 = struct.Struct("<f")
_INTS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "bit", "year"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry",
           "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
           "geometrycollection"}
_ZERO = {"date": "0000-00-00", "datetime": "0000-00-00 00:00:00",
         "timestamp": "0000-00-00 00:00:00"}
_CHUNK_ROWS = 100_000  # rows per LOAD DATA file: bounded temporary disk use
_INSERT_ROWS = 2_000  # rows per executemany call (pymysql folds them into multi-row INSERTs)
_FETCH = 5_000
# LOAD DATA's default escapes (ESCAPED BY '\\'): backslash, tab, newline, CR, NUL.
_ESCAPE_OF = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"}
_SPECIAL = re.compile("[\\\\\t\n\r\0]")


# ------------------------------------------------------------------ value conversion


def _timestamp(v: Any) -> str:
    """An ISO instant -> UTC wall-clock text with the same fraction digits."""
    text = str(v)
    if text.endswith("+00:00"):
        return text[:-6].replace("T", " ")
    instant = datetime.fromisoformat(text).astimezone(UTC)
    frac = re.search(r"\.(\d+)", text[11:])
    digits = len(frac.group(1)) if frac else 0
    out = instant.strftime("%Y-%m-%d %H:%M:%S")
    return out + ("." + f"{instant.microsecond:06d}"[:digits] if digits else "")


def _datetime(v: Any) -> str:
    return str(v).replace("T", " ")


def _float(v: Any) -> float:
    if isinstance(v, str):  # NaN / Infinity: MySQL stores neither
        raise DecodeError(f"expected a finite number for a MySQL float column, found {v!r}")
    return float(v)


def _float32(v: Any) -> float:
    """The exact double of the 32-bit float: `3.4028235e38` (shortest form of FLT_MAX)
    read as a double is past FLT_MAX, and the server refuses it as out of range."""
    return float(_F32.unpack(_F32.pack(_float(v)))[0])


def param_converter(column: Column) -> Convert:
    """JSON value -> the Python value pymysql binds for this column (None stays NULL)."""
    t = base_type(column.type_name)
    zero = None if column.nullable else _ZERO.get(t)
    conv: Convert
    if t in _INTS:
        conv = int
    elif t == "float":
        conv = _float32
    elif t in ("double", "real", "double precision"):
        conv = _float
    elif t in _BINARY:
        conv = base64.b64decode
    elif t == "json":
        conv = _JSON
    elif t == "timestamp":
        conv = _timestamp
    elif t == "datetime":
        conv = _datetime
    elif t in ("decimal", "numeric", "date", "time"):
        conv = str
    else:
        def conv(v: Any) -> Any:
            return v if isinstance(v, str) else _JSON(v)

    def convert(v: Any) -> Any:
        return zero if v is None else conv(v)

    return convert


def _escape(text: str) -> str:
    return _SPECIAL.sub(lambda m: _ESCAPE_OF[m.group()], text)


def load_data_field(column: Column) -> tuple[Convert, str | None]:
    """JSON value -> LOAD DATA field text, and the SET expression (over `@v`) if any.

    Binary values travel as base64 and are decoded by the server (FROM_BASE64),
    BIT as a number (a bare field would be taken as a string of bits' bytes),
    YEAR as four digits (a field `0` would mean 2000). Only free text can hold
    the characters LOAD DATA escapes; numbers, dates and base64 never do.
    """
    t = base_type(column.type_name)
    if t in _BINARY:
        return _plain_field(str), "FROM_BASE64(@v)"
    if t == "bit":
        return _plain_field(str), "CAST(@v AS UNSIGNED)"
    if t == "year":
        return _plain_field(lambda v: f"{v:04d}"), None
    if t in _INTS:
        return _plain_field(str), None
    if t in ("decimal", "numeric", "time") or (t == "date" and column.nullable):
        return _plain_field(str), None
    param = param_converter(column)
    if t in ("float", "double", "real", "double precision"):
        return _plain_field(lambda v: repr(param(v))), None
    if t in ("datetime", "timestamp") and column.nullable:
        return _plain_field(param), None

    def field(v: Any) -> str:
        p = param(v)
        return "\\N" if p is None else _escape(p)

    return field, None


def _plain_field(text: Callable[[Any], str]) -> Convert:
    def field(v: Any) -> str:
        return "\\N" if v is None else text(v)

    return field


def read_converter(column: Column, data_type: str) -> Convert:
    """Text-protocol value of the restored column -> the JSON value the archive holds."""
    t = base_type(column.type_name)
    if data_type.lower() == "float":
        return lambda v: float32(float(v))
    return value_converter(data_type, t == "json")


# ------------------------------------------------------------------ connection


def connect_target(dsn: str, local_infile: bool) -> pymysql.connections.Connection[Any]:
    """`mysql://user[:password]@host[:port]/db` (or mariadb://); password also from MYSQL_PWD."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
        raise UsageError(f"--target-dsn: expected mysql://user@host:3306/db, found {parts.scheme}://...")
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password) if parts.password else os.environ.get("MYSQL_PWD", ""),
        "database": unquote(parts.path.lstrip("/")) or None,
        "charset": "utf8mb4",
        "connect_timeout": 10,
        "autocommit": False,
        "local_infile": local_infile,
        # Keep the parameter encoders, drop the result decoders: read back as the
        # server's text, converted like the snapshot converts it.
        "conv": {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)},
    }
    if "unix_socket" in query:
        kwargs["unix_socket"] = query["unix_socket"][0]
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as exc:
        raise ServiceError(
            f"--target-dsn: could not connect to {parts.hostname}:{kwargs['port']}: "
            f"{_message(exc)}") from None


def _message(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    return str(args[-1]) if args else type(exc).__name__


# ------------------------------------------------------------------ the applier


class MySQLApplier:
    """connectors.base.Applier for MySQL/MariaDB targets (`--target-schema` = a database)."""

    def __init__(self, dsn: str, method: Method = "auto") -> None:
        self.conn = connect_target(dsn, local_infile=method != "insert")
        self._created_db: str | None = None
        self._created: list[str] = []
        # information_schema per table, read once per preview / in-place transaction.
        self._target_columns: dict[tuple[str, str], TargetColumns | None] = {}
        try:
            with self.conn.cursor() as cur:
                for stmt in _SESSION:
                    cur.execute(stmt)
                cur.execute("SELECT @@GLOBAL.local_infile, @@GLOBAL.max_allowed_packet")
                row = cur.fetchone()
        except pymysql.err.MySQLError as exc:
            self.conn.close()
            raise ServiceError(f"--target-dsn: {_message(exc)}") from None
        infile_on = row is not None and str(row[0]).upper() in ("1", "ON")
        if method == "load_data" and not infile_on:
            raise UsageError("target server: expected local_infile=ON for LOAD DATA, found OFF")
        self.method: Method = "load_data" if method != "insert" and infile_on else "insert"
        self._max_packet = int(row[1]) if row else 16 << 20
        # The server names the file it wants in a LOAD DATA LOCAL reply: allow that
        # only while our own LOAD DATA statement runs.
        self.conn._local_infile = False  # type: ignore[attr-defined]

    def _exec(self, sql: str) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def _existing_rows(self, db: str, table: str) -> int | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                        " AND TABLE_NAME = %s", (db, table))
            if cur.fetchone() is None:
                return None
        return len(self._exec(f"SELECT 1 FROM {q(db)}.{q(table)} LIMIT 1"))

    def load_new(self, target_schema: str, tables: list[TableSchema], rows: RestoreRows,
                 foreign_keys: bool) -> dict[str, int]:
        counts: dict[str, int] = {}
        self._created_db, self._created = None, []
        try:
            try:
                if not self._exec("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = "
                                  + self.conn.escape(target_schema)):
                    self._exec(f"CREATE DATABASE {q(target_schema)} CHARACTER SET utf8mb4")
                    self._created_db = target_schema
                for table in tables:
                    counts[table.qualified] = self._load_table(target_schema, table, rows)
                if foreign_keys:
                    restored = {(t.schema, t.table) for t in tables}
                    for table in tables:
                        stmt = foreign_key_ddl(target_schema, table, restored)
                        if stmt is not None:
                            self._exec(stmt)
                self.conn.commit()
            except pymysql.err.OperationalError as exc:
                raise ServiceError(f"--target-dsn: {_message(exc)}") from None
            except (pymysql.err.DataError, pymysql.err.IntegrityError,
                    pymysql.err.ProgrammingError, pymysql.err.InternalError) as exc:
                raise DecodeError(f"target refused a restored table or value: {_message(exc)}"
                                  ) from None
        except BaseException:
            self._drop_created()
            raise
        return counts

    def _drop_created(self) -> None:
        """MySQL DDL commits at once: undo what this restore created (best effort)."""
        try:
            self.conn.rollback()
            if self._created_db is not None:
                self._exec(f"DROP DATABASE IF EXISTS {q(self._created_db)}")
            else:
                for ident in reversed(self._created):
                    self._exec(f"DROP TABLE IF EXISTS {ident}")
        except pymysql.err.MySQLError as exc:
            log.warning("could not drop what the failed restore created: %s", _message(exc))

    def _load_table(self, db: str, table: TableSchema, rows: RestoreRows) -> int:
        existing = self._existing_rows(db, table.table)
        if existing:
            raise UsageError(
                f"target table {db}.{table.table}: expected an empty or new table, found rows "
                "(restore into a new --target-schema, or use --in-place)")
        ident = f"{q(db)}.{q(table.table)}"
        ddl = table_ddl(db, table, self.conn.escape)
        if existing is None:
            self._exec(ddl.create)
            self._created.append(ident)
        load = self._load_data if self.method == "load_data" else self._insert
        n = load(ident, table, rows(table))
        self._check_warnings(ident)
        self.conn.commit()
        if existing is None and ddl.after_load is not None:
            self._exec(ddl.after_load)
        if ddl.auto_increment is not None:
            got = self._exec(f"SELECT COALESCE(MAX({q(ddl.auto_increment)}), 0) + 1 FROM {ident}")
            self._exec(f"ALTER TABLE {ident} AUTO_INCREMENT = {int(got[0][0])}")
        log.info("restored %s rows into %s.%s (%s)", n, db, table.table, self.method)
        return n

    def _check_warnings(self, ident: str) -> None:
        warnings = self._exec("SHOW WARNINGS LIMIT 1")
        if warnings:
            level, code, message = warnings[0][:3]
            raise DecodeError(f"target table {ident}: the server changed a restored value "
                              f"({level} {code}: {message})")

    def _insert(self, ident: str, table: TableSchema, rows: Iterator[list[object]]) -> int:
        convert = [param_converter(c) for c in table.columns]
        names = ", ".join(q(c.name) for c in table.columns).replace("%", "%%")
        marks = ", ".join(["%s"] * len(table.columns))
        sql = f"INSERT INTO {ident.replace('%', '%%')} ({names}) VALUES ({marks})"
        n = 0
        batch: list[list[Any]] = []
        with self.conn.cursor() as cur:
            # pymysql folds an executemany INSERT into statements up to this length.
            cur.max_stmt_length = max(1 << 20, min(self._max_packet - (64 << 10), 16 << 20))
            for values in rows:
                batch.append([f(v) for f, v in zip(convert, values, strict=True)])
                if len(batch) >= _INSERT_ROWS:
                    cur.executemany(sql, batch)
                    n += len(batch)
                    batch.clear()
            if batch:
                cur.executemany(sql, batch)
                n += len(batch)
        return n

    def _load_data(self, ident: str, table: TableSchema, rows: Iterator[list[object]]) -> int:
        fields = [load_data_field(c) for c in table.columns]
        convert = [f for f, _ in fields]
        targets: list[str] = []
        sets: list[str] = []
        for i, (c, (_, expr)) in enumerate(zip(table.columns, fields, strict=True)):
            if expr is None:
                targets.append(q(c.name))
            else:
                targets.append(f"@v{i}")
                sets.append(f"{q(c.name)} = {expr.replace('@v', f'@v{i}')}")
        tail = f" ({', '.join(targets)})" + (f" SET {', '.join(sets)}" if sets else "")
        n = 0
        with tempfile.TemporaryDirectory(prefix="changevault-load-") as tmp:
            path = Path(tmp) / "rows.tsv"
            sql = (f"LOAD DATA LOCAL INFILE {self.conn.escape(str(path))} INTO TABLE {ident}"
                   " CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\'"
                   " LINES TERMINATED BY '\\n'" + tail)
            done = False
            while not done:
                count = 0
                with open(path, "w", encoding="utf-8", newline="\n") as f:
                    for values in rows:
                        f.write("\t".join([c(v) for c, v in zip(convert, values, strict=True)]))
                        f.write("\n")
                        count += 1
                        if count >= _CHUNK_ROWS:
                            break
                    else:
                        done = True
                if count:
                    self._run_load(sql)
                    self._check_warnings(ident)
                n += count
        return n

    def _run_load(self, sql: str) -> None:
        self.conn._local_infile = True  # type: ignore[attr-defined]
        try:
            self._exec(sql)
        finally:
            self.conn._local_infile = False  # type: ignore[attr-defined]

    def _reader(self, db: str, table: TableSchema, cols: TargetColumns | None,
                error: type[Exception]) -> tuple[str, list[Convert]]:
        """The SELECT list of the table's columns (FLOAT through DOUBLE: the text
        protocol prints 6 digits) and each column's converter to its JSON value."""
        types = cols.data_types if cols is not None else {}
        missing = [c.name for c in table.columns if c.name not in types]
        if missing:
            raise error(f"target table {db}.{table.table}: expected columns "
                        f"{', '.join(missing)} (as at the restore target), found none by "
                        "those names")
        conv = [read_converter(c, types[c.name]) for c in table.columns]
        select = ", ".join(f"CAST({qp(c.name)} AS DOUBLE)" if types[c.name] == "float"
                           else qp(c.name) for c in table.columns)
        return select, conv

    def read_back(self, target_schema: str, table: TableSchema) -> Iterator[list[object]]:
        cols = target_columns(self.conn, target_schema, table.table)
        select, conv = self._reader(target_schema, table, cols, DecodeError)
        self.conn.commit()  # a fresh read view: see everything the load committed
        with self.conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(f"SELECT {select} FROM {qp(target_schema)}.{qp(table.table)}", ())
            while batch := cur.fetchmany(_FETCH):
                for values in batch:
                    yield [None if v is None else f(v) for f, v in zip(conv, values, strict=True)]

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ preview and in place
    # One transaction (begun and finished by agent/restore/inplace.py's caller) with
    # foreign key checks on, so the server enforces and cascades as in production.

    def table_exists(self, target_schema: str, table: str) -> bool:
        return self._columns(target_schema, table) is not None

    def _columns(self, db: str, table: str) -> TargetColumns | None:
        key = (db, table)
        if key not in self._target_columns:
            self._target_columns[key] = target_columns(self.conn, db, table)
        return self._target_columns[key]

    def begin(self) -> None:
        """Start the one transaction of an in-place restore or a preview."""
        self._target_columns.clear()
        try:
            self.conn.rollback()
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION foreign_key_checks = 1")
                cur.execute("START TRANSACTION")
        except pymysql.err.MySQLError as exc:
            raise ServiceError(f"--target-dsn: {_message(exc)}") from None

    def finish(self, commit: bool) -> None:
        try:
            if commit:
                self.conn.commit()
            else:
                self.conn.rollback()
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION foreign_key_checks = 0")  # as load_new expects
        except pymysql.err.MySQLError as exc:
            raise ServiceError(f"--target-dsn: {_message(exc)}") from None

    def _matching(self, db: str, table: TableSchema, select: str, match: RowMatch | None,
                  suffix: str) -> Iterator[tuple[Any, ...]]:
        """Raw rows of `SELECT select FROM db.table` whose match columns equal one of the
        tuples (compared on the server, in chunks); match None: every row."""
        head = f"SELECT {select} FROM {qp(db)}.{qp(table.table)}"
        with self.conn.cursor() as cur:
            if match is None:
                cur.execute(head + suffix, ())
                yield from cur.fetchall()
                return
            by_name = {c.name: c for c in table.columns}
            columns = [by_name[n] for n in match.columns]
            params = [match_converter(c, param_converter(c)) for c in columns]
            for where, args in match_chunks(columns, match.values, params):
                cur.execute(f"{head} WHERE {where}{suffix}", args)
                yield from cur.fetchall()

    def select_rows(
        self, target_schema: str, table: TableSchema, match: RowMatch | None, lock: bool
    ) -> list[list[Any]]:
        """Rows (JSON values in column order) whose `match` columns equal one of the
        tuples: bound parameters compared on the server as the column's type, then
        exactly (a collation lets `'a' = 'A '` through). `lock`: FOR UPDATE."""
        if match is not None and not match.values:
            return []
        cols = self._columns(target_schema, table.table)
        select, conv = self._reader(target_schema, table, cols, UsageError)
        keep = None
        if match is not None:
            names = table.column_names
            keep = exact_filter([table.columns[names.index(n)] for n in match.columns],
                                [names.index(n) for n in match.columns], match.values)
        out = []
        try:
            for raw in self._matching(target_schema, table, select, match,
                                      " FOR UPDATE" if lock else ""):
                values = [None if v is None else f(v) for f, v in zip(conv, raw, strict=True)]
                if keep is None or keep(values):
                    out.append(values)
        except pymysql.err.MySQLError as exc:
            raise _service_error(exc) from None
        return out

    def triggers(self, target_schema: str, table: str) -> list[str]:
        """Triggers on the table (they fire during an in-place restore), with their event."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT TRIGGER_NAME, ACTION_TIMING, EVENT_MANIPULATION"
                " FROM information_schema.TRIGGERS"
                " WHERE EVENT_OBJECT_SCHEMA = %s AND EVENT_OBJECT_TABLE = %s"
                " ORDER BY TRIGGER_NAME",
                (target_schema, table),
            )
            return [f"{_text(n)} ({_text(t)} {_text(e)})" for n, t, e in cur.fetchall()]

    def cascade_outside(
        self,
        target_schema: str,
        table: TableSchema,
        deleted: list[list[Any]],
        scope: dict[str, tuple[TableSchema, list[list[Any]]]],
    ) -> str | None:
        """A row outside the scope that deleting `deleted` would cascade to, described.

        Any table of the server may reference this one (captured or not). Rows of
        a table in `scope` (same database) whose keys are in scope are the
        restore's own business; every other referencing row counts.
        """
        if not deleted:
            return None
        position = {c.name: i for i, c in enumerate(table.columns)}
        try:
            for fk in referencing_fks(self.conn, target_schema, table.table):
                if not all(c in position for c in fk.ref_columns):
                    continue
                values = [[row[position[c]] for c in fk.ref_columns] for row in deleted]
                probe = probe_table(fk, table)
                match = RowMatch(fk.columns, values)
                own = scope.get(fk.table) if fk.schema == target_schema else None
                if own is None or not own[1]:
                    found = sum(int(r[0]) for r in
                                self._matching(fk.schema, probe, "COUNT(*)", match, ""))
                else:
                    found = self._outside(fk.schema, own[0], probe, match, own[1])
                if found:
                    return (f"{fk.schema}.{fk.table} ({found} rows outside the scope) through "
                            f"foreign key {fk.name} ON DELETE {fk.action}")
        except pymysql.err.MySQLError as exc:
            raise _service_error(exc) from None
        return None

    def _outside(self, db: str, child: TableSchema, probe: TableSchema, match: RowMatch,
                 in_scope: list[list[Any]]) -> int:
        """Referencing rows of an in-scope table whose keys are not in scope."""
        cols = self._columns(db, child.table)
        key_table = TableSchema(child.schema, child.table,
                                tuple(next(c for c in child.columns if c.name == k)
                                      for k in child.primary_key), child.primary_key)
        select, conv = self._reader(db, key_table, cols, UsageError)
        own = {_JSON(k) for k in in_scope}
        found = 0
        for raw in self._matching(db, probe, select, match, ""):
            key = [None if v is None else f(v) for f, v in zip(conv, raw, strict=True)]
            found += _JSON(key) not in own
        return found

    def apply_rows(self, target_schema: str, table: TableSchema, changes: RowChanges) -> None:
        """Inserts, updates (only the columns that differ) and deletes, by primary key
        (connectors.mysql.inplace_sql.write_rows); a constraint violation is a UsageError."""
        cols = self._columns(target_schema, table.table)
        if cols is None:
            raise UsageError(f"target table {target_schema}.{table.table}: expected it to "
                             "exist for --in-place, found none")
        try:
            with self.conn.cursor() as cur:
                write_rows(cur, target_schema, table, cols, changes,
                           [param_converter(c) for c in table.columns])
        except pymysql.err.MySQLError as exc:
            if is_constraint_error(exc):
                raise UsageError(
                    f"{target_schema}.{table.table}: the in-place restore conflicts with the "
                    f"target's constraints ({_message(exc)}); rolled back, nothing written"
                ) from None
            raise _service_error(exc) from None


def _service_error(exc: pymysql.err.MySQLError) -> Exception:
    """Lock wait timeout, deadlock, permission denied, lost connection: exit 3;
    a statement the server could not take (a table reshaped under us): exit 2."""
    if isinstance(exc, pymysql.err.ProgrammingError):
        return UsageError(f"--target-dsn: the target refused a statement: {_message(exc)}")
    return ServiceError(f"--target-dsn: {_message(exc)}")


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes | bytearray) else str(v)
