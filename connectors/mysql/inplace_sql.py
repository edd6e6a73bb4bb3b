"""SQL pieces of `--preview` / `--in-place` on MySQL/MariaDB targets.

Identifiers are backtick-quoted by connectors.mysql.connection.quote_identifier
and, because every statement here runs with bound parameters (pymysql formats
with `%`), their `%` signs are doubled. Values are only ever bound.

Comparisons on the server follow the column's collation: under MariaDB's
default `utf8mb4_general_ci`, `'abc' = 'ABC '` is true. The restore compares
exactly (JSON values, as the capture path does), so rows a text comparison
returned are filtered again in Python against the requested values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pymysql

from agent.events import Column, TableSchema
from connectors.base import RowChanges
from connectors.mysql.connection import quote_identifier
from connectors.mysql.ddl import base_type

_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
MATCH_CHUNK = 500  # tuples per IN list: statements stay far below max_allowed_packet

# Types whose comparison follows a collation (case, trailing spaces): filtered again.
_GENERATED = re.compile(r"\b(?:virtual|stored|persistent) generated\b")
_COLLATED = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}

# Errors that mean "the target's constraints refuse these rows" (exit 2), by errno:
# duplicate key, foreign key (child / parent side), NOT NULL, CHECK (MariaDB 4025,
# MySQL 3819), and the strict-mode data errors (value out of range, too long...).
CONSTRAINT_ERRNOS = frozenset({
    1048, 1062, 1216, 1217, 1292, 1264, 1265, 1364, 1366, 1406, 1451, 1452, 1557, 1586,
    1761, 1762, 3819, 4025,
})


def qp(name: str) -> str:
    """A quoted identifier for a statement with bound parameters (`%` doubled)."""
    return quote_identifier(name).replace("%", "%%")


def is_constraint_error(exc: pymysql.err.MySQLError) -> bool:
    if isinstance(exc, pymysql.err.IntegrityError | pymysql.err.DataError):
        return True
    return bool(exc.args) and exc.args[0] in CONSTRAINT_ERRNOS


@dataclass(frozen=True, slots=True)
class TargetColumns:
    """What the target's information_schema says about a table's columns."""

    data_types: dict[str, str]  # name -> DATA_TYPE, lower case
    generated: frozenset[str]  # VIRTUAL / STORED generated: never written
    on_update: frozenset[str]  # ON UPDATE CURRENT_TIMESTAMP: set explicitly in an UPDATE


def target_columns(
    conn: pymysql.connections.Connection[Any], db: str, table: str
) -> TargetColumns | None:
    """The table's columns on the target, or None when it does not exist."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, EXTRA FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (db, table),
        )
        rows = [(_text(n), _text(t).lower(), _text(e or "").lower()) for n, t, e in cur.fetchall()]
    if not rows:
        return None
    return TargetColumns(
        {n: t for n, t, _ in rows},
        # Not MySQL 8's DEFAULT_GENERATED (an expression default, e.g. on a timestamp).
        frozenset(n for n, _, e in rows if _GENERATED.search(e)),
        frozenset(n for n, _, e in rows if "on update" in e),
    )


def match_converter(column: Column, param: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """JSON value -> the parameter compared with the column on the server.

    DECIMAL binds as a Decimal (an exact-value literal: a quoted string would be
    compared as a double); everything else as the applier writes it.
    """
    if base_type(column.type_name) in ("decimal", "numeric"):
        return lambda v: Decimal(str(v))
    return param


def match_chunks(
    columns: Sequence[Column],
    values: list[list[Any]],
    param: Sequence[Callable[[Any], Any]],
) -> Iterator[tuple[str, list[Any]]]:
    """`WHERE` conditions `(c1, c2) IN ((%s, %s), ...)` and their parameters, in chunks.

    Tuples holding a NULL are left out: NULL never equals anything.
    """
    wanted = [v for v in values if None not in v]
    names = ", ".join(qp(c.name) for c in columns)
    left = names if len(columns) == 1 else f"({names})"
    one = "%s" if len(columns) == 1 else "(" + ", ".join(["%s"] * len(columns)) + ")"
    for start in range(0, len(wanted), MATCH_CHUNK):
        chunk = wanted[start:start + MATCH_CHUNK]
        params = [f(v) for row in chunk for f, v in zip(param, row, strict=True)]
        yield f"{left} IN ({', '.join([one] * len(chunk))})", params


def exact_filter(
    columns: Sequence[Column], positions: Sequence[int], values: list[list[Any]]
) -> Callable[[list[Any]], bool] | None:
    """A test that a converted row's match columns equal one of `values` exactly, when
    a collation could have let more through; None when the server's test is exact."""
    if not any(base_type(c.type_name) in _COLLATED for c in columns):
        return None
    wanted = {_DUMPS(v) for v in values}
    return lambda row: _DUMPS([row[i] for i in positions]) in wanted


@dataclass(frozen=True, slots=True)
class Referencing:
    """A foreign key whose ON DELETE action writes to the referencing rows."""

    name: str
    schema: str
    table: str
    action: str  # CASCADE | SET NULL | SET DEFAULT
    columns: tuple[str, ...]
    ref_columns: tuple[str, ...]


def referencing_fks(
    conn: pymysql.connections.Connection[Any], db: str, table: str
) -> list[Referencing]:
    """Foreign keys from any table of the server to `db.table` with a writing ON DELETE."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rc.CONSTRAINT_NAME, rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, rc.DELETE_RULE,"
            " k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME"
            " FROM information_schema.REFERENTIAL_CONSTRAINTS rc"
            " JOIN information_schema.KEY_COLUMN_USAGE k"
            " ON k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA"
            " AND k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME AND k.TABLE_NAME = rc.TABLE_NAME"
            " WHERE rc.UNIQUE_CONSTRAINT_SCHEMA = %s AND rc.REFERENCED_TABLE_NAME = %s"
            " AND rc.DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')"
            " AND k.REFERENCED_COLUMN_NAME IS NOT NULL"
            " ORDER BY rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION",
            (db, table),
        )
        rows = cur.fetchall()
    found: dict[tuple[str, str, str], Referencing] = {}
    for name, schema, child, action, column, ref in rows:
        k = (_text(schema), _text(child), _text(name))
        prev = found.get(k)
        found[k] = Referencing(
            k[2], k[0], k[1], _text(action),
            (*(prev.columns if prev else ()), _text(column)),
            (*(prev.ref_columns if prev else ()), _text(ref)),
        )
    return list(found.values())


def probe_table(fk: Referencing, parent: TableSchema) -> TableSchema:
    """The referencing table's FK columns typed as the parent's referenced columns
    (the values compared are the parent's)."""
    types = {c.name: c for c in parent.columns}
    return TableSchema(
        fk.schema,
        fk.table,
        tuple(
            Column(c, types[r].type_name, types[r].nullable, None)
            for c, r in zip(fk.columns, fk.ref_columns, strict=True)
        ),
        (),
    )


def write_rows(
    cur: pymysql.cursors.Cursor,
    db: str,
    table: TableSchema,
    cols: TargetColumns,
    changes: RowChanges,
    convert: Sequence[Callable[[Any], Any]],
) -> None:
    """Inserts, updates (only the columns that differ) and deletes, by primary key.

    `convert`: each column's JSON value -> bound parameter. Generated columns
    are never written. A column with ON UPDATE CURRENT_TIMESTAMP is always set
    in an UPDATE (to the restored value), else the server would stamp it with
    the restore's time.
    """
    ident = f"{qp(db)}.{qp(table.table)}"
    names = table.column_names
    writable = [i for i, n in enumerate(names) if n not in cols.generated]
    stamped = [i for i in writable if names[i] in cols.on_update]
    key = [names.index(c) for c in table.primary_key]
    key_param = [match_converter(table.columns[i], convert[i]) for i in key]
    key_where = " AND ".join(f"{qp(names[i])} = %s" for i in key)
    if changes.inserts:
        # Plain `%s` placeholders: pymysql folds these into multi-row INSERTs.
        cur.executemany(
            f"INSERT INTO {ident} ({', '.join(qp(names[i]) for i in writable)})"
            f" VALUES ({', '.join(['%s'] * len(writable))})",
            [[convert[i](row[i]) for i in writable] for row in changes.inserts],
        )
    for old, new in changes.updates:
        differ = [i for i in writable if old[i] != new[i]]
        if not differ:
            continue  # only generated columns differ: verification will say so
        sets = differ + [i for i in stamped if i not in differ]
        cur.execute(
            f"UPDATE {ident} SET {', '.join(f'{qp(names[i])} = %s' for i in sets)}"
            f" WHERE {key_where}",
            [convert[i](new[i]) for i in sets]
            + [f(old[i]) for f, i in zip(key_param, key, strict=True)],
        )
    if changes.deletes:
        cur.executemany(
            f"DELETE FROM {ident} WHERE {key_where}",
            [[f(row[i]) for f, i in zip(key_param, key, strict=True)] for row in changes.deletes],
        )


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes | bytearray) else str(v)
