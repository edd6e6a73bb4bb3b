"""TABLE_MAP events, including `binlog_row_metadata=FULL` optional metadata.

With FULL metadata the table map carries everything needed to decode a row at
its own position: column names, wire types, signedness, character sets,
ENUM/SET values and the primary key. That is why decoding never consults the
live information_schema.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.errors import DecodeError
from connectors.mysql.binlog_events import read_lenenc

# Column wire types (MySQL field_types.h).
T_DECIMAL = 0
T_TINY = 1
T_SHORT = 2
T_LONG = 3
T_FLOAT = 4
T_DOUBLE = 5
T_NULL = 6
T_TIMESTAMP = 7
T_LONGLONG = 8
T_INT24 = 9
T_DATE = 10
T_TIME = 11
T_DATETIME = 12
T_YEAR = 13
T_NEWDATE = 14
T_VARCHAR = 15
T_BIT = 16
T_TIMESTAMP2 = 17
T_DATETIME2 = 18
T_TIME2 = 19
T_JSON = 245
T_NEWDECIMAL = 246
T_ENUM = 247
T_SET = 248
T_TINY_BLOB = 249
T_MEDIUM_BLOB = 250
T_LONG_BLOB = 251
T_BLOB = 252
T_VAR_STRING = 253
T_STRING = 254
T_GEOMETRY = 255

_NUMERIC = frozenset({T_TINY, T_SHORT, T_INT24, T_LONG, T_LONGLONG, T_NEWDECIMAL, T_FLOAT,
                      T_DOUBLE, T_DECIMAL})
_META_1 = frozenset({T_FLOAT, T_DOUBLE, T_BLOB, T_GEOMETRY, T_JSON, T_TIMESTAMP2, T_DATETIME2,
                     T_TIME2, T_TINY_BLOB, T_MEDIUM_BLOB, T_LONG_BLOB})
_META_2 = frozenset({T_VARCHAR, T_VAR_STRING, T_BIT, T_NEWDECIMAL, T_STRING, T_ENUM, T_SET})

# Optional metadata field types (MySQL rows_event.h, Table_map_event::Optional_metadata_field_type).
_SIGNEDNESS = 1
_DEFAULT_CHARSET = 2
_COLUMN_CHARSET = 3
_COLUMN_NAME = 4
_SET_STR_VALUE = 5
_ENUM_STR_VALUE = 6
_SIMPLE_PRIMARY_KEY = 8
_PRIMARY_KEY_WITH_PREFIX = 9
_ENUM_AND_SET_DEFAULT_CHARSET = 10
_ENUM_AND_SET_COLUMN_CHARSET = 11


@dataclass(frozen=True, slots=True)
class MappedColumn:
    name: str
    type: int  # wire type; for STRING-coded ENUM/SET, the real type
    meta: int
    nullable: bool
    unsigned: bool = False
    collation: int | None = None  # character columns only
    values: tuple[str, ...] = ()  # ENUM/SET member names

    @property
    def signature(self) -> tuple[object, ...]:
        return (self.name, self.type, self.meta, self.unsigned, self.collation, self.values)


@dataclass(frozen=True, slots=True)
class TableMap:
    table_id: int
    schema: str
    table: str
    columns: tuple[MappedColumn, ...]
    primary_key: tuple[str, ...]
    has_names: bool  # False unless binlog_row_metadata=FULL

    @property
    def signature(self) -> tuple[object, ...]:
        """Identifies the table's shape: it changes when DDL changes the columns."""
        return (tuple(c.signature for c in self.columns), self.primary_key)


def parse_table_id(body: bytes) -> int:
    return int.from_bytes(body[0:6], "little")


def _real_type_and_meta(col_type: int, meta: int) -> tuple[int, int]:
    """STRING columns encode ENUM/SET and CHAR lengths over 255 in their metadata."""
    if col_type != T_STRING:
        return col_type, meta
    real, low = meta >> 8, meta & 0xFF
    if real in (T_ENUM, T_SET):
        return real, low  # low = storage size in bytes
    # CHAR(N) with N*mbmaxlen > 255 folds the high bits of the length into `real`.
    length = (((real & 0x30) ^ 0x30) << 4) | low
    return T_STRING, length


def _bitmap(buf: bytes, count: int) -> list[bool]:
    """Optional-metadata bitmaps are most-significant bit first."""
    return [bool(buf[i >> 3] & (0x80 >> (i & 7))) for i in range(count)]


def parse_table_map(body: bytes, mariadb: bool = True) -> TableMap:
    try:
        return _parse_table_map(body, mariadb)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"expected a well-formed TABLE_MAP event, found {exc}") from exc


def _parse_table_map(body: bytes, mariadb: bool) -> TableMap:
    table_id = parse_table_id(body)
    pos = 8
    slen = body[pos]
    schema = body[pos + 1 : pos + 1 + slen].decode("utf-8")
    pos += slen + 2
    tlen = body[pos]
    table = body[pos + 1 : pos + 1 + tlen].decode("utf-8")
    pos += tlen + 2
    count, pos = read_lenenc(body, pos)
    types = list(body[pos : pos + count])
    pos += count
    meta_len, pos = read_lenenc(body, pos)
    meta_end = pos + meta_len
    metas: list[int] = []
    for t in types:
        if t in _META_1:
            metas.append(body[pos])
            pos += 1
        elif t in (T_STRING, T_ENUM, T_SET, T_NEWDECIMAL):  # (type|precision, len|scale)
            metas.append(body[pos] << 8 | body[pos + 1])
            pos += 2
        elif t in _META_2:
            metas.append(struct.unpack_from("<H", body, pos)[0])
            pos += 2
        else:
            metas.append(0)
    pos = meta_end
    nbytes = (count + 7) // 8
    nulls = [bool(body[pos + (i >> 3)] & (1 << (i & 7))) for i in range(count)]
    pos += nbytes

    real = [_real_type_and_meta(t, m) for t, m in zip(types, metas, strict=True)]
    # MariaDB's signedness bitmap also covers YEAR (an unsigned integer field there).
    numeric_types = _NUMERIC | {T_YEAR} if mariadb else _NUMERIC
    numeric = [i for i, (t, _) in enumerate(real) if t in numeric_types]
    character = [i for i, (t, _) in enumerate(real)
                 if t in (T_STRING, T_VARCHAR, T_VAR_STRING, T_BLOB, T_TINY_BLOB,
                          T_MEDIUM_BLOB, T_LONG_BLOB)]
    enum_set = [i for i, (t, _) in enumerate(real) if t in (T_ENUM, T_SET)]
    unsigned = [False] * count
    collation: list[int | None] = [None] * count
    names: list[str] | None = None
    values: list[tuple[str, ...]] = [()] * count
    primary_key: list[int] = []

    while pos < len(body):
        field = body[pos]
        length, pos = read_lenenc(body, pos + 1)
        value = body[pos : pos + length]
        pos += length
        if field == _SIGNEDNESS:
            for i, flag in zip(numeric, _bitmap(value, len(numeric)), strict=True):
                unsigned[i] = flag
        elif field in (_DEFAULT_CHARSET, _ENUM_AND_SET_DEFAULT_CHARSET):
            cols = character if field == _DEFAULT_CHARSET else enum_set
            default, p = read_lenenc(value, 0)
            for i in cols:
                collation[i] = default
            while p < len(value):
                idx, p = read_lenenc(value, p)
                coll, p = read_lenenc(value, p)
                collation[cols[idx]] = coll
        elif field in (_COLUMN_CHARSET, _ENUM_AND_SET_COLUMN_CHARSET):
            cols = character if field == _COLUMN_CHARSET else enum_set
            p = 0
            for i in cols:
                collation[i], p = read_lenenc(value, p)
        elif field == _COLUMN_NAME:
            names, p = [], 0
            while p < len(value):
                n, p = read_lenenc(value, p)
                names.append(value[p : p + n].decode("utf-8"))
                p += n
        elif field in (_SET_STR_VALUE, _ENUM_STR_VALUE):
            want = T_SET if field == _SET_STR_VALUE else T_ENUM
            p = 0
            for i in (i for i, (t, _) in enumerate(real) if t == want):
                n, p = read_lenenc(value, p)
                members = []
                for _ in range(n):
                    ln, p = read_lenenc(value, p)
                    members.append(value[p : p + ln].decode("utf-8"))
                    p += ln
                values[i] = tuple(members)
        elif field in (_SIMPLE_PRIMARY_KEY, _PRIMARY_KEY_WITH_PREFIX):
            p = 0
            while p < len(value):
                idx, p = read_lenenc(value, p)
                if field == _PRIMARY_KEY_WITH_PREFIX:
                    _, p = read_lenenc(value, p)
                primary_key.append(idx)

    has_names = names is not None and len(names) == count
    col_names = names if names is not None and has_names else [f"@{i + 1}" for i in range(count)]
    columns = tuple(
        MappedColumn(col_names[i], real[i][0], real[i][1], nulls[i], unsigned[i], collation[i],
                     values[i])
        for i in range(count)
    )
    return TableMap(table_id, schema, table, columns,
                    tuple(col_names[i] for i in primary_key), has_names)
