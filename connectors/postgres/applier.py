"""The PostgreSQL Applier: restored tables into a new schema by COPY, read back as JSON.

Values arrive as CONTRACT.md JSON values and are turned back into each
type's text input form for text COPY (bytea from base64 to hex, JSON values
re-serialised, arrays as array literals, astronomical years back to BC).
Reading back casts every column to text and runs the capture path's
converters (connectors.postgres.pgtypes) under the capture session's
settings, so a restored value reads back exactly as the archive holds it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from agent.errors import ServiceError, UsageError
from agent.events import TableSchema
from connectors.base import RestoreRows
from connectors.postgres.ddl import foreign_key_ddl, table_ddl
from connectors.postgres.pgtypes import (
    REPLICATION_SESSION_SETTINGS,
    TYPE_INFO_QUERY,
    TypeConverters,
    TypeInfo,
)

log = logging.getLogger(__name__)

TextValue = Callable[[Any], str | None]
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_FETCH = 5000


def _bc_date(s: str) -> str:
    """ISO astronomical year ('-0043-03-15...', '0000-...') -> PostgreSQL's '0044-03-15... BC'."""
    neg = s.startswith("-")
    body = s[1:] if neg else s
    year, _, rest = body.partition("-")
    astro = -int(year) if neg else int(year)
    return f"{1 - astro:04d}-{rest} BC"


def _temporal(v: Any) -> str:
    s = str(v)
    if s.startswith("-") or s.startswith("0000-"):
        return _bc_date(s)
    return s


def _bytea(v: Any) -> str:
    return "\\x" + base64.b64decode(v).hex()


def _json_value(v: Any) -> str:
    return _JSON(v)


def _bool(v: Any) -> str:
    return "t" if v is True else "f" if v is False else str(v)


def _plain(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return _JSON(v)
    return repr(v) if isinstance(v, float) else str(v)


def _base_converter(type_name: str) -> Callable[[Any], str]:
    t = type_name.lower()
    if t == "bytea":
        return _bytea
    if t in ("json", "jsonb"):
        return _json_value
    if t == "boolean":
        return _bool
    if t == "date" or t.startswith("timestamp"):
        return _temporal
    return _plain


def _array_literal(v: Any, element: Callable[[Any], str]) -> str:
    if not isinstance(v, list):
        return element(v)
    items = []
    for item in v:
        if item is None:
            items.append("NULL")
        elif isinstance(item, list):
            items.append(_array_literal(item, element))
        else:
            text = element(item)
            items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def text_value(type_name: str) -> TextValue:
    """JSON value -> the type's text input (None stays NULL)."""
    if type_name.endswith("[]"):
        element = _base_converter(type_name.rstrip("[]").strip())

        def array(v: Any) -> str | None:
            return None if v is None else _array_literal(v, element)

        return array
    base = _base_converter(type_name)

    def scalar(v: Any) -> str | None:
        return None if v is None else base(v)

    return scalar


class PgApplier:
    """connectors.base.Applier for PostgreSQL targets."""

    def __init__(self, dsn: str) -> None:
        try:
            self.conn = psycopg.connect(dsn, autocommit=False)
        except psycopg.OperationalError as exc:
            raise ServiceError(f"--target-dsn: could not connect: {_first_line(exc)}") from None
        # Read back in the forms the capture path expects (see pgtypes).
        for name, value in REPLICATION_SESSION_SETTINGS.items():
            self.conn.execute(
                sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        self.conn.commit()
        self.after_load_hook: Callable[[psycopg.Connection[Any]], None] | None = None

    def _existing_rows(self, schema: str, table: str) -> int | None:
        row = self.conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        ).fetchone()
        if row is None:
            return None
        got = self.conn.execute(
            sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) s").format(
                sql.Identifier(schema, table)
            )
        ).fetchone()
        return int(got[0]) if got else 0

    def load_new(
        self, target_schema: str, tables: list[TableSchema], rows: RestoreRows, foreign_keys: bool
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        try:
            with self.conn.transaction():
                self.conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema))
                )
                for table in tables:
                    counts[table.qualified] = self._load_table(target_schema, table, rows)
                if foreign_keys:
                    restored = {(t.schema, t.table) for t in tables}
                    for table in tables:
                        for stmt in foreign_key_ddl(target_schema, table, restored):
                            self.conn.execute(stmt)
                if self.after_load_hook is not None:  # tests: corrupt a row before commit
                    self.after_load_hook(self.conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ServiceError(f"--target-dsn: permission denied: {_first_line(exc)}") from None
        except psycopg.OperationalError as exc:
            raise ServiceError(f"--target-dsn: {_first_line(exc)}") from None
        return counts

    def _load_table(self, target_schema: str, table: TableSchema, rows: RestoreRows) -> int:
        existing = self._existing_rows(target_schema, table.table)
        if existing:
            raise UsageError(
                f"target table {target_schema}.{table.table}: expected an empty or new table, "
                "found rows (restore into a new --target-schema, or use --in-place)"
            )
        ddl = table_ddl(target_schema, table)
        if existing is None:
            for stmt in ddl.create:
                self.conn.execute(stmt)
        ident = sql.Identifier(target_schema, table.table)
        columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
        convert = [text_value(c.type_name) for c in table.columns]
        # FREEZE: the table was created in this transaction, so rows can be written
        # frozen (no hint-bit rewrite on first read).
        options = sql.SQL(" (FREEZE)") if existing is None else sql.SQL("")
        n = 0
        with (
            self.conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} ({}) FROM STDIN{}").format(ident, columns, options)) as copy,
        ):
            for values in rows(table):
                copy.write_row([f(v) for f, v in zip(convert, values, strict=True)])
                n += 1
        if existing is None:
            for stmt in ddl.after_load:
                self.conn.execute(stmt)
        for seq, column in ddl.sequences:
            self.conn.execute(
                sql.SQL(
                    "SELECT setval({}, coalesce((SELECT max({}) FROM {}), 0) + 1, false)"
                ).format(sql.Literal(f'"{target_schema}"."{seq}"'), sql.Identifier(column), ident)
            )
        log.info("restored %s rows into %s.%s", n, target_schema, table.table)
        return n

    def _converters(self) -> TypeConverters:
        def resolve(oid: int) -> TypeInfo | None:
            row = self.conn.execute(TYPE_INFO_QUERY, (oid,)).fetchone()
            if row is None:
                return None
            return TypeInfo(int(row[0]), row[1], row[2], int(row[3] or 0), int(row[4] or 0))

        return TypeConverters(resolve)

    def read_back(self, target_schema: str, table: TableSchema) -> Iterator[list[Any]]:
        names = [c.name for c in table.columns]
        oids: dict[str, int] = dict(
            self.conn.execute(
                "SELECT a.attname, a.atttypid::int8 FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                (sql.Identifier(target_schema, table.table).as_string(self.conn),),
            ).fetchall()
        )
        conv = self._converters().row(tuple(int(oids[n]) for n in names))
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names),
            sql.Identifier(target_schema, table.table),
        )
        with self.conn.transaction(), self.conn.cursor(name="cv_restore_readback") as cur:
            cur.itersize = _FETCH
            cur.execute(query)
            for values in cur:
                yield [
                    None if v is None else f(v.encode()) for f, v in zip(conv, values, strict=True)
                ]

    def close(self) -> None:
        self.conn.close()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
