"""DDL for restored tables in a target MySQL/MariaDB database.

Identifiers are backtick-quoted (backticks doubled). Type names and default
expressions come from the signed archive, as the source printed them
(information_schema COLUMN_TYPE / COLUMN_DEFAULT, or the binlog table map);
they are SQL, not values, so each is checked against a conservative shape
before it is composed, and a default that is plainly a string is re-quoted
by the driver's own literal escaping.

MySQL DDL commits implicitly, so a restore cannot be one transaction the way
it is on PostgreSQL: the applier drops what it created when a load fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import DecodeError
from agent.events import Column, TableSchema
from connectors.mysql.connection import quote_identifier as q

Literal = Callable[[object], str]

# `AUTO_INCREMENT` as a column default marks an auto-increment column (the
# snapshot's COLUMN_DEFAULT is NULL for those; EXTRA says auto_increment).
AUTO_INCREMENT = "auto_increment"
# Index prefix for TEXT/BLOB columns: the archive does not record SUB_PART, and
# InnoDB refuses a key on them without one. 255 characters of utf8mb4 fit in
# InnoDB's 3072-byte key limit.
TEXT_KEY_PREFIX = 255

_QUOTED = r"'(?:[^'\\]|\\.|'')*'"
_WORD_TYPE = re.compile(
    r"^(?:double precision|[a-z]+)(?:\(\d+(?:,\d+)?\))?(?: (?:unsigned|zerofill|binary|signed))*"
    r"(?: (?:character set|charset|collate) [a-z0-9_]+)*$"
)
_ENUM_TYPE = re.compile(
    rf"^(?:enum|set)\({_QUOTED}(?:,{_QUOTED})*\)"
    r"(?: (?:character set|charset|collate) [a-z0-9_]+)*$",
    re.DOTALL,
)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?$")
_BIT_LITERAL = re.compile(r"^[bB]'[01]*'$|^0x[0-9A-Fa-f]+$")
_STRING_LITERAL = re.compile(rf"^{_QUOTED}$", re.DOTALL)
_TIME_FUNCTION = re.compile(
    r"^(?:current_timestamp|now|localtime|localtimestamp|current_date|curdate|current_time|"
    r"curtime|utc_timestamp|utc_date|utc_time|sysdate)(?:\(\d?\))?$",
    re.IGNORECASE,
)
_TEXT_TYPES = ("tinytext", "text", "mediumtext", "longtext", "tinyblob", "blob", "mediumblob",
               "longblob", "json")


def base_type(type_name: str) -> str:
    """`bigint(20) unsigned` -> `bigint`; `enum('a')` -> `enum`."""
    return re.split(r"[\s(]", type_name.strip().lower(), maxsplit=1)[0]


def is_unsigned(type_name: str) -> bool:
    return " unsigned" in type_name.lower()


def type_sql(column: Column) -> str:
    name = column.type_name.strip()
    low = name.lower()
    if low.startswith(("enum(", "set(")):
        paren = name.index("(")
        if not _ENUM_TYPE.match(low[:paren] + name[paren:]):
            raise DecodeError(f"column {column.name}: expected an ENUM/SET type, found {name!r}")
        return name
    if not _WORD_TYPE.match(re.sub(r"\s+", " ", low)):
        raise DecodeError(f"column {column.name}: expected a MySQL type name, found {name!r}")
    return name


def is_auto_increment(column: Column) -> bool:
    return column.default is not None and column.default.strip().lower() == AUTO_INCREMENT


def default_sql(column: Column, literal: Literal) -> str | None:
    """The DEFAULT clause's expression, or None for no clause.

    MariaDB prints literals quoted (`'abc'`), `NULL` for a NULL default and
    expressions bare; MySQL 8 prints strings unquoted. Anything that is not a
    quoted literal, number, bit literal, NULL, time function or an expression
    is taken as a MySQL 8 string and quoted by the driver.
    """
    raw = column.default
    if raw is None or is_auto_increment(column):
        return None
    text = raw.strip()
    if text.upper() == "NULL":
        return "NULL"
    if (_STRING_LITERAL.match(text) or _NUMBER.match(text) or _BIT_LITERAL.match(text)
            or _TIME_FUNCTION.match(text)):
        return text
    if ("(" in text or "`" in text) and _balanced(text):
        return f"({text})"  # an expression default (MariaDB >= 10.2, MySQL >= 8.0.13)
    return literal(raw)


def _balanced(expr: str) -> bool:
    """Quotes closed, parentheses balanced, no statement separator or comment outside quotes."""
    depth = 0
    quote = ""
    i = 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
        elif ch == ";" or expr.startswith(("--", "/*", "#"), i):
            return False
        i += 1
    return not quote and depth == 0


def key_part(table: TableSchema, column: str) -> str:
    col = next((c for c in table.columns if c.name == column), None)
    if col is not None and base_type(col.type_name) in _TEXT_TYPES:
        return f"{q(column)}({TEXT_KEY_PREFIX})"
    return q(column)


@dataclass(frozen=True, slots=True)
class TableDdl:
    create: str  # CREATE TABLE with columns, NOT NULL, defaults, primary key
    after_load: str | None  # one ALTER TABLE adding the secondary indexes
    auto_increment: str | None  # the auto-increment column, if any


def table_ddl(target_db: str, table: TableSchema, literal: Literal) -> TableDdl:
    ident = f"{q(target_db)}.{q(table.table)}"
    parts: list[str] = []
    auto: str | None = None
    for c in table.columns:
        col = f"{q(c.name)} {type_sql(c)}"
        if not c.nullable or c.name in table.primary_key:
            col += " NOT NULL"
        elif base_type(c.type_name) == "timestamp":
            col += " NULL"  # else an old-style server makes it NOT NULL DEFAULT now()
        default = default_sql(c, literal)
        if default is not None:
            col += f" DEFAULT {default}"
        if is_auto_increment(c) and auto is None:
            col += " AUTO_INCREMENT"
            auto = c.name
        parts.append(col)
    # InnoDB clusters rows by the primary key: declaring it up front avoids a
    # table rebuild after the load. Secondary indexes come after: one sorted build.
    if table.primary_key:
        parts.append("PRIMARY KEY (" + ", ".join(key_part(table, c) for c in table.primary_key)
                     + ")")
    if auto is not None and auto not in table.primary_key[:1]:
        parts.append(f"KEY {q('cv_' + auto)} ({q(auto)})")  # AUTO_INCREMENT needs a key
    create = f"CREATE TABLE {ident} (" + ", ".join(parts) + ") DEFAULT CHARSET=utf8mb4"
    adds = [
        f"ADD {'UNIQUE ' if idx.unique else ''}INDEX {q(idx.name)} ("
        + ", ".join(key_part(table, c) for c in idx.columns) + ")"
        for idx in table.indexes
    ]
    after = f"ALTER TABLE {ident} " + ", ".join(adds) if adds else None
    return TableDdl(create, after, auto)


def foreign_key_ddl(target_db: str, table: TableSchema, restored: set[tuple[str, str]]
                    ) -> str | None:
    """One ALTER TABLE adding the foreign keys whose referenced table is restored too."""
    adds = []
    for fk in table.foreign_keys:
        if (fk.ref_schema, fk.ref_table) not in restored:
            continue
        adds.append(
            f"ADD CONSTRAINT {q(fk.name)} FOREIGN KEY ("
            + ", ".join(map(q, fk.columns)) + f") REFERENCES {q(target_db)}.{q(fk.ref_table)} ("
            + ", ".join(map(q, fk.ref_columns)) + f") ON DELETE {_on_delete(fk.on_delete)}"
        )
    if not adds:
        return None
    return f"ALTER TABLE {q(target_db)}.{q(table.table)} " + ", ".join(adds)


def _on_delete(action: str) -> str:
    if action not in {"NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"}:
        raise DecodeError(f"expected a foreign key action, found {action!r}")
    return action
