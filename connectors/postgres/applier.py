"""The PostgreSQL Applier: restored tables into a new schema by COPY, read back as JSON.

Values arrive as CONTRACT.md JSON values and are written as preformatted
COPY text lines (connectors.postgres.copy_format). Reading back copies the
table out in text format and runs the capture path's converters
(connectors.postgres.pgtypes) under the capture session's settings, so a
restored value reads back exactly as the archive holds it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from agent import fastjson
from agent.errors import ServiceError, UsageError
from agent.events import TableSchema
from connectors.base import RestoreRows, RowChanges, RowMatch
from connectors.postgres.copy_format import (
    TextValue,
    copy_line,
    copy_row_reader,
    text_value,
)
from connectors.postgres.ddl import REFERENCING_FKS_SQL, foreign_key_ddl, table_ddl, type_sql
from connectors.postgres.pgtypes import (
    REPLICATION_SESSION_SETTINGS,
    TYPE_INFO_QUERY,
    TypeConverters,
    TypeInfo,
)

log = logging.getLogger(__name__)

__all__ = ["PgApplier", "TextValue", "match_sql", "text_value"]

RowConv = Callable[[Sequence[str | None]], list[Any]]
_ACTIONS = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def match_sql(table: TableSchema, match: RowMatch) -> tuple[sql.Composed, list[list[str | None]]]:
    """`(c1, c2) IN (SELECT * FROM unnest($1::text[]::t1[], ...))` and its arrays."""
    types = {c.name: c for c in table.columns}
    arrays: list[list[str | None]] = []
    casts: list[sql.Composable] = []
    for i, name in enumerate(match.columns):
        column = types[name]
        to_text = text_value(column.type_name)
        arrays.append([to_text(row[i]) for row in match.values])
        casts.append(sql.SQL("%s::text[]::{}[]").format(type_sql(column)))
    where = sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(
        sql.SQL(", ").join(map(sql.Identifier, match.columns)), sql.SQL(", ").join(casts)
    )
    return where, arrays


_FETCH = 5000
_COPY_CHUNK = 256 * 1024  # characters of COPY text per write


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
        line = copy_line([c.type_name for c in table.columns])
        # FREEZE: the table was created in this transaction, so rows can be written
        # frozen (no hint-bit rewrite on first read).
        options = sql.SQL(" (FREEZE)") if existing is None else sql.SQL("")
        n = 0
        with (
            self.conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} ({}) FROM STDIN{}").format(ident, columns, options)) as copy,
        ):
            chunk: list[str] = []
            size = 0
            for values in rows(table):
                text = line(values)
                chunk.append(text)
                size += len(text)
                n += 1
                if size >= _COPY_CHUNK:
                    copy.write("".join(chunk).encode())
                    chunk.clear()
                    size = 0
            if chunk:
                copy.write("".join(chunk).encode())
        if existing is None:
            for stmt in ddl.after_load:
                self.conn.execute(stmt)
        for seq, column in ddl.sequences:
            self.conn.execute(
                sql.SQL(
                    "SELECT setval({}, coalesce((SELECT max({}) FROM {}), 0) + 1, false)"
                ).format(sql.Literal(f'"{target_schema}"."{seq}"'), sql.Identifier(column), ident)
            )
        for column in ddl.identities:
            self.conn.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({}, {}),"
                    " coalesce((SELECT max({}) FROM {}), 0) + 1, false)"
                ).format(
                    sql.Literal(ident.as_string(self.conn)),
                    sql.Literal(column),
                    sql.Identifier(column),
                    ident,
                )
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

    def _column_converters(
        self, target_schema: str, table: TableSchema
    ) -> tuple[list[str], tuple[Callable[[bytes], Any], ...]]:
        """The table's column names and the capture path's converter of each."""
        names = [c.name for c in table.columns]
        oids: dict[str, int] = dict(
            self.conn.execute(
                "SELECT a.attname, a.atttypid::int8 FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                (sql.Identifier(target_schema, table.table).as_string(self.conn),),
            ).fetchall()
        )
        missing = [n for n in names if n not in oids]
        if missing:
            raise UsageError(
                f"target table {target_schema}.{table.table}: expected columns "
                f"{', '.join(missing)} (as at the restore target), found none by those names"
            )
        convs = self._converters().row(tuple(int(oids[n]) for n in names))
        return names, tuple(
            _raw_json(f, c.type_name) for f, c in zip(convs, table.columns, strict=True)
        )

    def _row_reader(self, target_schema: str, table: TableSchema) -> tuple[sql.Composed, RowConv]:
        """SELECT list of the table's columns as text, and their JSON converters."""
        names, conv = self._column_converters(target_schema, table)
        select = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names)

        def convert(values: Sequence[str | None]) -> list[Any]:
            return [None if v is None else f(v.encode()) for f, v in zip(conv, values, strict=True)]

        return select, convert

    def read_back(self, target_schema: str, table: TableSchema) -> Iterator[list[Any]]:
        """Every row as JSON values, copied out in text format (each column's output form)."""
        names, conv = self._column_converters(target_schema, table)
        convert = copy_row_reader(conv)
        query = sql.SQL("COPY {} ({}) TO STDOUT").format(
            sql.Identifier(target_schema, table.table),
            sql.SQL(", ").join(map(sql.Identifier, names)),
        )
        rest = b""
        with self.conn.cursor() as cur, cur.copy(query) as copy:
            for data in copy:
                chunk = rest + bytes(data) if rest else bytes(data)
                if chunk.endswith(b"\n") and chunk.count(b"\n") == 1:
                    rest = b""
                    yield convert(chunk)  # the server sends one row per message
                    continue
                *lines, rest = chunk.split(b"\n")
                for line in lines:
                    yield convert(line)
        if rest:
            yield convert(rest)

    # ------------------------------------------------------------ in place

    def table_exists(self, target_schema: str, table: str) -> bool:
        return self._existing_rows(target_schema, table) is not None

    def begin(self) -> None:
        """Start the one transaction of an in-place restore or a preview."""
        self.conn.rollback()  # psycopg opens the transaction with the next statement

    def finish(self, commit: bool) -> None:
        if commit:
            self.conn.commit()
        else:
            self.conn.rollback()

    def select_rows(
        self,
        target_schema: str,
        table: TableSchema,
        match: RowMatch | None,
        lock: bool,
    ) -> list[list[Any]]:
        """Rows (JSON values in column order) whose `match` columns equal one of the tuples.

        Values are bound as one text array per column and cast to the column's
        type on the server: typed comparison, index use, nothing spliced in.
        `match` None selects every row. `lock` takes FOR UPDATE row locks.
        """
        if match is not None and not match.values:
            return []
        select, convert = self._row_reader(target_schema, table)
        where: sql.Composable = sql.SQL("")
        params: list[list[str | None]] = []
        if match is not None:
            cond, params = match_sql(table, match)
            where = sql.SQL(" WHERE {}").format(cond)
        query = sql.SQL("SELECT {} FROM {}{}{}").format(
            select,
            sql.Identifier(target_schema, table.table),
            where,
            sql.SQL(" FOR UPDATE") if lock else sql.SQL(""),
        )
        try:
            return [convert(r) for r in self.conn.execute(query, params).fetchall()]
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ServiceError(f"--target-dsn: permission denied: {_first_line(exc)}") from None

    def triggers(self, target_schema: str, table: str) -> list[str]:
        """User triggers on the table (they fire during an in-place restore)."""
        rows = self.conn.execute(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D'"
            " ORDER BY t.tgname",
            (target_schema, table),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def cascade_outside(
        self,
        target_schema: str,
        table: TableSchema,
        deleted: list[list[Any]],
        scope: dict[str, tuple[TableSchema, list[list[Any]]]],
    ) -> str | None:
        """A row outside the scope that deleting `deleted` would cascade to, described.

        `scope` maps "table" (in the target schema) -> (its definition, the keys
        of its rows in scope): referencing rows among those are the restore's
        own business; any other row reached by ON DELETE CASCADE / SET NULL /
        SET DEFAULT is outside it.
        """
        if not deleted:
            return None
        ident = sql.Identifier(target_schema, table.table).as_string(self.conn)
        refs = self.conn.execute(REFERENCING_FKS_SQL, (ident,)).fetchall()
        position = {c.name: i for i, c in enumerate(table.columns)}
        types = {c.name: c for c in table.columns}
        for name, child_schema, child_table, action, child_cols, ref_cols in refs:
            if action not in ("c", "n", "d") or not all(c in position for c in ref_cols):
                continue
            values = [[row[position[c]] for c in ref_cols] for row in deleted]
            values = [v for v in values if None not in v]
            if not values:
                continue
            probe = TableSchema(
                child_schema,
                child_table,
                tuple(
                    dataclasses.replace(types[r], name=c)
                    for c, r in zip(child_cols, ref_cols, strict=True)
                ),
                (),
            )
            where, params = match_sql(probe, RowMatch(tuple(child_cols), values))
            own = scope.get(child_table) if child_schema == target_schema else None
            if own is not None and own[1]:
                not_own, more = match_sql(own[0], RowMatch(own[0].primary_key, own[1]))
                where = sql.SQL("{} AND NOT {}").format(where, not_own)
                params = [*params, *more]
            got = self.conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                    sql.Identifier(child_schema, child_table), where
                ),
                params,
            ).fetchone()
            if got and int(got[0]) > 0:
                return (
                    f"{child_schema}.{child_table} ({int(got[0])} rows outside the scope) through "
                    f"foreign key {name} ON DELETE {_ACTIONS[action]}"
                )
        return None

    def apply_rows(self, target_schema: str, table: TableSchema, changes: RowChanges) -> None:
        """Inserts, updates (only the columns that differ) and deletes, by primary key."""
        ident = sql.Identifier(target_schema, table.table)
        convert = [text_value(c.type_name) for c in table.columns]
        names = [c.name for c in table.columns]
        position = {n: i for i, n in enumerate(names)}
        key = [position[c] for c in table.primary_key]
        key_where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.primary_key
        )
        try:
            with self.conn.cursor() as cur:
                if changes.inserts:
                    cur.executemany(
                        sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})").format(
                            ident,
                            sql.SQL(", ").join(map(sql.Identifier, names)),
                            sql.SQL(", ").join(sql.Placeholder() * len(names)),
                        ),
                        [
                            [f(v) for f, v in zip(convert, row, strict=True)]
                            for row in changes.inserts
                        ],
                    )
                for old, new in changes.updates:
                    cols = [i for i in range(len(names)) if old[i] != new[i]]
                    cur.execute(
                        sql.SQL("UPDATE {} SET {} WHERE {}").format(
                            ident,
                            sql.SQL(", ").join(
                                sql.SQL("{} = %s").format(sql.Identifier(names[i])) for i in cols
                            ),
                            key_where,
                        ),
                        [convert[i](new[i]) for i in cols] + [convert[i](old[i]) for i in key],
                    )
                if changes.deletes:
                    cur.executemany(
                        sql.SQL("DELETE FROM {} WHERE {}").format(ident, key_where),
                        [[convert[i](row[i]) for i in key] for row in changes.deletes],
                    )
        except psycopg.errors.IntegrityConstraintViolation as exc:
            raise UsageError(
                f"{target_schema}.{table.table}: the in-place restore conflicts with the "
                f"target's constraints ({_first_line(exc)}); nothing was written"
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ServiceError(f"--target-dsn: permission denied: {_first_line(exc)}") from None

    def close(self) -> None:
        self.conn.close()


def _raw_json(convert: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """json/jsonb columns read back as their exact JSON text (bytes), the form the
    restore's fold keeps them in (agent.restore.fold); other columns as they are."""
    array = fastjson.json_column(type_name)
    if array is None:
        return convert
    return lambda data: fastjson.raw(convert(data), array)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
