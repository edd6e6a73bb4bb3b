"""`--entity TABLE.COLUMN=VALUE`: the root, the links that reach it, and typed values.

The value is parsed strictly against the root column's type and only ever
compared as a typed value (in Python against the fold, as a bound parameter
on the target): `1;DROP TABLE x` for an integer column is a usage error, and
for a text column it is just a string nobody splices into SQL.

Links are foreign keys between captured tables (from the snapshot's
definitions) plus `entity_links` from the config. A table is in scope when
it reaches the root table through links, directly or through other captured
tables.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from agent.errors import UsageError
from agent.events import TableSchema
from agent.restore.names import resolve_table, split_unquoted
from agent.settings import EntityLink, _identifier_parts

_INT = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
_INT_RANGES = {
    "smallint": 1 << 15,
    "integer": 1 << 31,
    "bigint": 1 << 63,
}
# MySQL/MariaDB integer types as information_schema prints them: `int(11) unsigned`.
_MYSQL_INT = re.compile(
    r"^(tinyint|smallint|mediumint|int|integer|bigint)(\(\d+\))?( unsigned)?( zerofill)?$"
)
_MYSQL_INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32,
                   "bigint": 64}
_NUMERIC_SCALE = re.compile(r"^(?:numeric|decimal)\(\d+,(\d+)\)( unsigned)?( zerofill)?$")
_TEXT_TYPES = ("text", "character varying", "varchar", "citext", "name")


@dataclass(frozen=True, slots=True)
class Link:
    """Rows of `child` whose `columns` equal `ref_columns` of a row of `parent`."""

    child: str
    columns: tuple[str, ...]
    parent: str
    ref_columns: tuple[str, ...]
    declared: bool = False  # from entity_links (always indexed by the archive sink)


@dataclass(frozen=True, slots=True)
class TypedValue:
    """The root value: how to compare it with archived JSON values, bind it, hash it."""

    type_name: str
    value: Any  # int | Decimal | str | uuid.UUID | bool
    text: str  # the type's text input form, bound as a parameter and cast on the server
    json: Any  # the JSON value the capture path prints, or None when not canonical

    def matches(self, archived: Any) -> bool:
        if archived is None:
            return False
        try:
            return bool(_COERCE[_kind(self.type_name)](archived) == self.value)
        except (ValueError, TypeError, ArithmeticError):
            return False


@dataclass(frozen=True, slots=True)
class EntityRoot:
    table: str  # "schema.table"
    column: str
    value: TypedValue

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}={self.value.text}"


def _int_range(type_name: str) -> tuple[int, int] | None:
    """[low, high) of an integer type (PostgreSQL's names, or MySQL's), else None."""
    t = type_name.lower()
    if t in _INT_RANGES:
        return -_INT_RANGES[t], _INT_RANGES[t]
    m = _MYSQL_INT.match(t)
    if m is None:
        return None
    bits = _MYSQL_INT_BITS[m.group(1)]
    return (0, 1 << bits) if m.group(3) else (-(1 << (bits - 1)), 1 << (bits - 1))


def _kind(type_name: str) -> str:
    t = type_name.lower()
    if _int_range(t) is not None:
        return "int"
    if t in ("numeric", "decimal") or t.startswith(("numeric(", "decimal(")):
        return "numeric"
    if t == "uuid":
        return "uuid"
    if t == "boolean":
        return "bool"
    if t.startswith(_TEXT_TYPES):
        return "text"
    return "unsupported"


def _strict_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("not an integer")
    return v


_COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _strict_int,
    "numeric": lambda v: Decimal(str(v)),
    "uuid": lambda v: uuid.UUID(str(v)),
    "bool": lambda v: v if isinstance(v, bool) else None,
    "text": lambda v: v if isinstance(v, str) else None,
}


def parse_value(type_name: str, raw: str, where: str) -> TypedValue:
    """The value of `--entity` as the column's type, or a UsageError naming what was expected."""
    kind = _kind(type_name)
    if kind == "int":
        low, high = _int_range(type_name) or (0, 0)
        if not _INT.match(raw) or not low <= int(raw) < high:
            raise UsageError(f"{where}: expected a {type_name} value, found {raw!r}")
        n = int(raw)
        return TypedValue(type_name, n, str(n), n)
    if kind == "numeric":
        if not _DECIMAL.match(raw):
            raise UsageError(f"{where}: expected a decimal number ({type_name}), found {raw!r}")
        try:
            d = Decimal(raw)
        except InvalidOperation:
            raise UsageError(f"{where}: expected a decimal number, found {raw!r}") from None
        m = _NUMERIC_SCALE.match(type_name.lower())
        # The archive holds the server's text, which has the column's scale; without
        # a declared scale the printed form is not known, so no index lookup.
        printed = str(d.quantize(Decimal(1).scaleb(-int(m.group(1))))) if m else None
        return TypedValue(type_name, d, str(d), printed)
    if kind == "uuid":
        try:
            u = uuid.UUID(raw)
        except ValueError:
            raise UsageError(f"{where}: expected a UUID, found {raw!r}") from None
        return TypedValue(type_name, u, str(u), str(u))
    if kind == "bool":
        if raw not in ("true", "false"):
            raise UsageError(f"{where}: expected true or false, found {raw!r}")
        return TypedValue(type_name, raw == "true", raw, raw == "true")
    if kind == "text":
        if "\x00" in raw:
            raise UsageError(f"{where}: expected text without NUL characters")
        json_form = raw if type_name.lower().startswith(_TEXT_TYPES) else None
        return TypedValue(type_name, raw, raw, json_form)
    raise UsageError(
        f"{where}: expected a column of an integer, numeric, text, uuid or boolean type, "
        f"found {type_name}"
    )


def parse_entity(raw: str, tables: dict[str, TableSchema]) -> EntityRoot:
    """`[schema.]table.column=value` against the captured tables' definitions.

    Names may be quoted as agent.settings.parse_table_name allows; the value
    starts after the first `=` outside quotes.
    """
    where = "--entity"
    head = split_unquoted(raw, "=")
    if len(head) < 2:
        raise UsageError(f"{where}: expected TABLE.COLUMN=VALUE, found {raw!r}")
    left = head[0]
    value = raw[len(left) + 1 :]
    try:
        parts = _identifier_parts(left.strip())
    except ValueError as exc:
        raise UsageError(
            f"{where}: expected [schema.]table.column, found {left!r}: {exc}"
        ) from None
    if len(parts) not in (2, 3):
        raise UsageError(f"{where}: expected [schema.]table.column, found {left!r}")
    schema = resolve_table(
        parts[0] if len(parts) == 3 else None, parts[-2], tables.values(), where
    )
    table = schema.qualified
    column = parts[-1]
    types = {c.name: c.type_name for c in schema.columns}
    if column not in types:
        raise UsageError(
            f"{where}: expected a column of {table}, found {column!r} (columns: {', '.join(types)})"
        )
    return EntityRoot(table, column, parse_value(types[column], value, f"{where} {table}.{column}"))


def links_of(tables: dict[str, TableSchema], declared: Iterable[EntityLink]) -> list[Link]:
    """Foreign keys between captured tables, plus the config's entity_links."""
    out: list[Link] = []
    for t in tables.values():
        for fk in t.foreign_keys:
            parent = f"{fk.ref_schema}.{fk.ref_table}"
            if parent in tables:
                out.append(Link(t.qualified, fk.columns, parent, fk.ref_columns))
    for link in declared:
        child, child_col = _link_end(link.from_, tables)
        parent, parent_col = _link_end(link.to, tables)
        out.append(Link(child, (child_col,), parent, (parent_col,), declared=True))
    return out


def _link_end(text: str, tables: dict[str, TableSchema]) -> tuple[str, str]:
    where = f"entity_links {text}"
    try:
        parts = _identifier_parts(text)
    except ValueError as exc:
        raise UsageError(f"{where}: expected [schema.]table.column: {exc}") from None
    if len(parts) not in (2, 3):
        raise UsageError(f"{where}: expected [schema.]table.column")
    schema = parts[0] if len(parts) == 3 else None
    return resolve_table(schema, parts[-2], tables.values(), where).qualified, parts[-1]


def scope_tables(root: str, links: list[Link]) -> list[str]:
    """The root table and every table that reaches it through links, parents first."""
    order = [root]
    seen = {root}
    i = 0
    while i < len(order):
        parent = order[i]
        i += 1
        for link in links:
            if link.parent == parent and link.child not in seen:
                seen.add(link.child)
                order.append(link.child)
    return order
