"""DDL for restored tables in a target schema, built with psycopg.sql only.

Type names and default expressions come from the signed archive (what
format_type and pg_get_expr printed on the source); they are expressions,
not identifiers, so they are checked against a conservative pattern before
being composed. A default that draws from a sequence (serial columns) is
replaced by the restored table's OWN sequence: a restore never touches the
source's sequences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from agent.errors import DecodeError
from agent.events import Column, TableSchema

_TYPE_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_ ."(),\[\]]*$')
_NEXTVAL = re.compile(r"^nextval\('.*'::regclass\)$")


def type_sql(column: Column) -> sql.SQL:
    name = column.type_name
    if not _TYPE_NAME.match(name) or "--" in name:
        raise DecodeError(f"column {column.name}: expected a type name, found {name!r}")
    return sql.SQL(name)


def draws_from_sequence(column: Column) -> bool:
    return column.default is not None and bool(_NEXTVAL.match(column.default))


def sequence_name(table: TableSchema, column: Column) -> str:
    return f"{table.table}_{column.name}_seq"[:63]


@dataclass(frozen=True, slots=True)
class TableDdl:
    """Statements for one table: before the load, and after it (keys, indexes, sequences)."""

    create: list[sql.Composed]
    after_load: list[sql.Composed]
    sequences: list[tuple[str, str]]  # (sequence name, column) to set past the maximum


def table_ddl(target_schema: str, table: TableSchema) -> TableDdl:
    ident = sql.Identifier(target_schema, table.table)
    cols: list[sql.Composable] = []
    create: list[sql.Composed] = []
    sequences: list[tuple[str, str]] = []
    for c in table.columns:
        parts: list[sql.Composable] = [sql.Identifier(c.name), type_sql(c)]
        if draws_from_sequence(c):
            seq = sequence_name(table, c)
            create.append(sql.SQL("CREATE SEQUENCE {}").format(sql.Identifier(target_schema, seq)))
            parts.append(
                sql.SQL("DEFAULT nextval({})").format(sql.Literal(f'"{target_schema}"."{seq}"'))
            )
            sequences.append((seq, c.name))
        elif c.default is not None:
            parts.append(sql.Composed([sql.SQL("DEFAULT "), sql.SQL(c.default)]))
        if not c.nullable or c.name in table.primary_key:
            parts.append(sql.SQL("NOT NULL"))
        cols.append(sql.SQL(" ").join(parts))
    create.append(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(cols)))
    for seq, column in sequences:
        create.append(
            sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                sql.Identifier(target_schema, seq),
                sql.Identifier(target_schema, table.table, column),
            )
        )
    after: list[sql.Composed] = []
    # Keys and indexes after the load: one sorted build beats a million inserts into a B-tree.
    if table.primary_key:
        after.append(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                ident, sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
            )
        )
    for idx in table.indexes:
        after.append(
            sql.SQL("CREATE {}INDEX {} ON {} ({})").format(
                sql.SQL("UNIQUE " if idx.unique else ""),
                sql.Identifier(idx.name),
                ident,
                sql.SQL(", ").join(map(sql.Identifier, idx.columns)),
            )
        )
    return TableDdl(create, after, sequences)


def foreign_key_ddl(
    target_schema: str, table: TableSchema, restored: set[tuple[str, str]]
) -> list[sql.Composed]:
    """Foreign keys whose referenced table is restored too, pointed at its copy."""
    out: list[sql.Composed] = []
    for fk in table.foreign_keys:
        if (fk.ref_schema, fk.ref_table) not in restored:
            continue
        out.append(
            sql.SQL(
                "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {}"
            ).format(
                sql.Identifier(target_schema, table.table),
                sql.Identifier(fk.name),
                sql.SQL(", ").join(map(sql.Identifier, fk.columns)),
                sql.Identifier(target_schema, fk.ref_table),
                sql.SQL(", ").join(map(sql.Identifier, fk.ref_columns)),
                sql.SQL(_on_delete(fk.on_delete)),
            )
        )
    return out


def _on_delete(action: str) -> str:
    if action not in {"NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"}:
        raise DecodeError(f"expected a foreign key action, found {action!r}")
    return action


# Foreign keys that point at a table (regclass text bound as the parameter):
# name, referencing schema and table, ON DELETE action code, columns, referenced columns.
REFERENCING_FKS_SQL = """
SELECT c.conname, cn.nspname, cr.relname, c.confdeltype::text,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_constraint c
JOIN pg_class cr ON cr.oid = c.conrelid
JOIN pg_namespace cn ON cn.oid = cr.relnamespace
WHERE c.confrelid = %s::regclass AND c.contype = 'f'
ORDER BY c.conname
"""
