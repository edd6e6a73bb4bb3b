"""The history of captured tables' shapes, persisted in the state directory.

Rows are decoded with the TABLE_MAP that precedes them (binlog_row_metadata=FULL
carries names, types, signedness, charsets, ENUM/SET members and the primary
key), so an old position always decodes with the shape it had. This history
numbers those shapes (TableSchema.version), keeps what the table map cannot
say (MariaDB JSON columns are LONGTEXT with a JSON_VALID check, declared
display types from information_schema at the snapshot) and records every DDL
statement with its position. It is never filled from the live
information_schema for an old event: only at a snapshot, whose position is now.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from agent.errors import DecodeError
from agent.events import Column, ForeignKey, Index, TableSchema
from connectors.mysql import table_map as tm
from connectors.mysql.table_map import MappedColumn, TableMap

FILE_NAME = "mysql-schema-history.json"

_INT_NAMES = {tm.T_TINY: "tinyint", tm.T_SHORT: "smallint", tm.T_INT24: "mediumint",
              tm.T_LONG: "int", tm.T_LONGLONG: "bigint"}
_BLOB_SIZES = {1: "tiny", 2: "", 3: "medium", 4: "long"}
# An identifier: backtick-quoted (a doubled backtick inside is one backtick) or bare.
_IDENT = r"(?:`((?:[^`]|``)+)`|([\w$]+))"
_JSON_DECL = re.compile(_IDENT + r"\s+json\b", re.IGNORECASE)
_DROP_COL = re.compile(r"\bdrop\s+(?:column\s+)?(?:if\s+exists\s+)?" + _IDENT, re.IGNORECASE)
_MODIFY_COL = re.compile(
    r"\b(?:modify\s+(?:column\s+)?(?:if\s+exists\s+)?" + _IDENT + r"|"
    r"change\s+(?:column\s+)?(?:if\s+exists\s+)?" + _IDENT + r"\s+" + _IDENT + r")\s+(\w+)",
    re.IGNORECASE)
TABLE_NAME = _IDENT + r"(?:\s*\.\s*" + _IDENT + r")?"
_DDL = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)*(?:(create|alter|drop|rename)\s+(?:or\s+replace\s+)?"
    r"(?:temporary\s+)?(?:online\s+)?(?:ignore\s+)?table|(truncate)(?:\s+table)?)\s+"
    r"(?:if\s+(?:not\s+)?exists\s+)?" + TABLE_NAME,
    re.IGNORECASE | re.DOTALL)
_RENAME_PAIR = re.compile(TABLE_NAME + r"\s+to\s+" + TABLE_NAME, re.IGNORECASE)


def _ident(quoted: str | None, bare: str | None) -> str:
    return quoted.replace("``", "`") if quoted is not None else bare or ""


def split_table_name(groups: tuple[str | None, ...], default_db: str) -> tuple[str, str]:
    first = _ident(groups[0], groups[1])
    if groups[2] is None and groups[3] is None:
        return default_db, first
    return first, _ident(groups[2], groups[3])


@dataclass(frozen=True, slots=True)
class DDLStatement:
    kind: str  # create | alter | drop | rename | truncate
    tables: tuple[tuple[str, str], ...]  # (database, table); rename: old, new, old, new...


def parse_ddl(sql: str, default_db: str) -> DDLStatement | None:
    """The kind and target tables of a table DDL statement; None for anything else."""
    m = _DDL.match(sql)
    if not m:
        return None
    kind = (m.group(1) or m.group(2)).lower()
    if kind == "rename":
        body = sql[m.start(3) - 1 if m.group(3) else m.start(4):]
        pairs: list[tuple[str, str]] = []
        for p in _RENAME_PAIR.finditer(body):
            g = p.groups()
            pairs += [split_table_name(g[:4], default_db), split_table_name(g[4:], default_db)]
        return DDLStatement(kind, tuple(pairs))
    targets = [split_table_name(m.groups()[2:6], default_db)]
    if kind == "drop":  # DROP TABLE a, b, c
        rest = sql[m.end():]
        targets += [split_table_name(g.groups(), default_db)
                    for g in re.finditer(r",\s*" + TABLE_NAME, rest)]
    return DDLStatement(kind, tuple(targets))


def _mbmaxlen(charset: str | None) -> int:
    return {"utf8mb4": 4, "utf8mb3": 3, "utf8": 3, "ucs2": 2, "utf16": 4, "utf16le": 4,
            "utf32": 4, "sjis": 2, "cp932": 2, "ujis": 3, "eucjpms": 3, "gbk": 2,
            "gb2312": 2, "gb18030": 4, "big5": 2, "euckr": 2}.get(charset or "", 1)


def type_name(col: MappedColumn, charset: str | None, is_json: bool) -> str:
    """The column's type as DDL would spell it, from what a table map says."""
    typ, meta = col.type, col.meta
    unsigned = " unsigned" if col.unsigned else ""
    binary = charset == "binary"
    if typ in _INT_NAMES:
        return _INT_NAMES[typ] + unsigned
    if typ in (tm.T_FLOAT, tm.T_DOUBLE):
        return ("float" if typ == tm.T_FLOAT else "double") + unsigned
    if typ == tm.T_NEWDECIMAL:
        return f"decimal({meta >> 8},{meta & 0xFF})" + unsigned
    if typ in (tm.T_DATETIME2, tm.T_TIMESTAMP2, tm.T_TIME2):
        base = {tm.T_DATETIME2: "datetime", tm.T_TIMESTAMP2: "timestamp", tm.T_TIME2: "time"}[typ]
        return f"{base}({meta})" if meta else base
    simple = {tm.T_DATE: "date", tm.T_YEAR: "year", tm.T_TIMESTAMP: "timestamp",
              tm.T_DATETIME: "datetime", tm.T_TIME: "time", tm.T_GEOMETRY: "geometry",
              tm.T_JSON: "json"}
    if typ in simple:
        return simple[typ]
    if typ == tm.T_BIT:
        return f"bit({(meta >> 8) * 8 + (meta & 0xFF)})"
    if typ in (tm.T_ENUM, tm.T_SET):
        members = ",".join("'" + v.replace("'", "''") + "'" for v in col.values)
        return f"{'enum' if typ == tm.T_ENUM else 'set'}({members})"
    if typ in (tm.T_VARCHAR, tm.T_VAR_STRING):
        return f"varbinary({meta})" if binary else f"varchar({meta // _mbmaxlen(charset)})"
    if typ == tm.T_STRING:
        return f"binary({meta})" if binary else f"char({meta // _mbmaxlen(charset)})"
    if typ in (tm.T_BLOB, tm.T_TINY_BLOB, tm.T_MEDIUM_BLOB, tm.T_LONG_BLOB):
        if is_json:
            return "json"
        return _BLOB_SIZES.get(meta, "") + ("blob" if binary else "text")
    raise DecodeError(f"expected a supported column type for {col.name}, found wire type {typ}")


@dataclass(frozen=True, slots=True)
class TableVersion:
    schema: TableSchema
    since: tuple[int, ...]  # sort key of the position this shape was first seen at
    signature: str | None  # the table map's shape; None until the first table map
    json_columns: frozenset[str] = frozenset()


def _schema_to_json(s: TableSchema) -> dict[str, object]:
    return {
        "schema": s.schema, "table": s.table, "version": s.version,
        "columns": [[c.name, c.type_name, c.nullable, c.default] for c in s.columns],
        "primary_key": list(s.primary_key),
        "foreign_keys": [[f.name, list(f.columns), f.ref_schema, f.ref_table,
                          list(f.ref_columns), f.on_delete] for f in s.foreign_keys],
        "indexes": [[i.name, list(i.columns), i.unique] for i in s.indexes],
    }


def _schema_from_json(d: dict[str, object]) -> TableSchema:
    cols = d["columns"]
    fks = d["foreign_keys"]
    idx = d["indexes"]
    assert isinstance(cols, list) and isinstance(fks, list) and isinstance(idx, list)
    return TableSchema(
        schema=str(d["schema"]), table=str(d["table"]), version=int(str(d["version"])),
        columns=tuple(Column(c[0], c[1], c[2], c[3]) for c in cols),
        primary_key=tuple(d["primary_key"]),  # type: ignore[arg-type]
        foreign_keys=tuple(ForeignKey(f[0], tuple(f[1]), f[2], f[3], tuple(f[4]), f[5])
                           for f in fks),
        indexes=tuple(Index(i[0], tuple(i[1]), i[2]) for i in idx),
    )


class SchemaHistory:
    """Versions of every captured table and the DDL seen, in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._versions: dict[str, list[TableVersion]] = {}
        self._json: dict[str, frozenset[str]] = {}  # current JSON columns per table
        self._ddl: list[dict[str, object]] = []
        if self.path.exists():
            self._load()

    # ------------------------------------------------------------ persistence

    def _load(self) -> None:
        data = json.loads(self.path.read_text())
        for name, versions in data["tables"].items():
            self._versions[name] = [
                TableVersion(_schema_from_json(v["schema"]), tuple(v["since"]), v["signature"],
                             frozenset(v["json_columns"])) for v in versions]
        self._json = {k: frozenset(v) for k, v in data["json"].items()}
        self._ddl = data["ddl"]

    def save(self) -> None:
        data = {
            "tables": {name: [{"schema": _schema_to_json(v.schema), "since": list(v.since),
                               "signature": v.signature, "json_columns": sorted(v.json_columns)}
                              for v in versions]
                       for name, versions in self._versions.items()},
            "json": {k: sorted(v) for k, v in self._json.items()},
            "ddl": self._ddl,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # ---------------------------------------------------------------- queries

    def latest(self, qualified: str) -> TableVersion | None:
        versions = self._versions.get(qualified)
        return versions[-1] if versions else None

    def versions(self, qualified: str) -> list[TableVersion]:
        return list(self._versions.get(qualified, ()))

    def json_columns(self, qualified: str) -> frozenset[str]:
        return self._json.get(qualified, frozenset())

    def ddl(self) -> list[dict[str, object]]:
        return list(self._ddl)

    # ---------------------------------------------------------------- updates

    def record_snapshot(self, schema: TableSchema, json_columns: frozenset[str],
                        since: tuple[int, ...]) -> TableSchema:
        """A table's shape read at a snapshot (whose position is now)."""
        name = schema.qualified
        latest = self.latest(name)
        if latest is not None and _same_shape(latest.schema, schema):
            return latest.schema
        version = (latest.schema.version + 1) if latest else 1
        schema = replace(schema, version=version)
        self._versions.setdefault(name, []).append(
            TableVersion(schema, since, None, json_columns))
        self._json[name] = json_columns
        self.save()
        return schema

    def resolve(self, table_map: TableMap, since: tuple[int, ...],
                charset_of: dict[int, str]) -> tuple[TableVersion, bool]:
        """The version a table map describes; (version, True) when it is new."""
        if not table_map.has_names:
            raise DecodeError(
                f"expected binlog_row_metadata=FULL column names for "
                f"{table_map.schema}.{table_map.table}, found none")
        name = f"{table_map.schema}.{table_map.table}"
        signature = json.dumps(table_map.signature, separators=(",", ":"))
        versions = self._versions.setdefault(name, [])
        for v in reversed(versions):
            if v.signature == signature:
                return v, False
        latest = versions[-1] if versions else None
        names = tuple(c.name for c in table_map.columns)
        if latest is not None and latest.signature is None and latest.schema.column_names == names:
            adopted = replace(latest, signature=signature)
            versions[-1] = adopted
            self.save()
            return adopted, False
        json_cols = self._json.get(name, frozenset())
        columns = tuple(
            Column(c.name, type_name(c, charset_of.get(c.collation or -1), c.name in json_cols),
                   c.nullable)
            for c in table_map.columns)
        carried = latest.schema if latest else None
        schema = TableSchema(
            schema=table_map.schema, table=table_map.table, columns=columns,
            primary_key=table_map.primary_key or (carried.primary_key if carried else ()),
            version=(latest.schema.version + 1) if latest else 1,
            foreign_keys=carried.foreign_keys if carried else (),
        )
        version = TableVersion(schema, since, signature, json_cols & frozenset(names))
        versions.append(version)
        self.save()
        return version, True

    def record_ddl(self, sql: str, default_db: str, position: str) -> DDLStatement | None:
        ddl = parse_ddl(sql, default_db)
        if ddl is None:
            return None
        self._ddl.append({"position": position, "database": default_db, "sql": sql})
        if ddl.kind == "rename":
            for (odb, old), (ndb, new) in zip(ddl.tables[::2], ddl.tables[1::2], strict=True):
                self._json[f"{ndb}.{new}"] = self._json.pop(f"{odb}.{old}", frozenset())
        elif ddl.kind == "create":
            db, table = ddl.tables[0]
            like = re.search(r"\blike\s+" + TABLE_NAME, sql, re.IGNORECASE)
            if like:
                src = split_table_name(like.groups(), default_db)
                self._json[f"{db}.{table}"] = self._json.get(f"{src[0]}.{src[1]}", frozenset())
            else:
                self._json[f"{db}.{table}"] = frozenset(
                    _ident(*m.groups()) for m in _JSON_DECL.finditer(sql))
        elif ddl.kind == "alter":
            db, table = ddl.tables[0]
            cols = set(self._json.get(f"{db}.{table}", frozenset()))
            for m in _MODIFY_COL.finditer(sql):
                g = m.groups()  # modify: g[0:2]; change old new: g[2:4] g[4:6]; type: g[6]
                col = _ident(g[0], g[1]) if g[0] is not None or g[1] is not None else _ident(
                    g[4], g[5])
                cols.discard(col)
                if g[6].lower() == "json":
                    cols.add(col)
            for m in _DROP_COL.finditer(sql):
                cols.discard(_ident(*m.groups()))
            cols |= {_ident(*m.groups()) for m in _JSON_DECL.finditer(sql)}
            self._json[f"{db}.{table}"] = frozenset(cols)
        elif ddl.kind == "drop":
            for db, table in ddl.tables:
                self._json.pop(f"{db}.{table}", None)
        self.save()
        return ddl


def _same_shape(a: TableSchema, b: TableSchema) -> bool:
    return (a.columns, a.primary_key, a.foreign_keys, a.indexes) == (
        b.columns, b.primary_key, b.foreign_keys, b.indexes)
