"""Keyed hashes of rows' identities: Kafka message keys and segment index entries.

HMAC-SHA256 under `keyhash.key` of a canonical typed encoding, so equal keys
hash equal whatever dict order or Python type carried them, and distinct keys
never share an encoding:

    item   = tag (1 byte) || u32 len || bytes
    input  = b"changevault-keyhash-v1\\0" || kind item
             || str(schema) || str(table) || u32 column count
             || per column, sorted by UTF-8 name: str(name) || value item

Value tags: N null, B bool, I int (decimal), D decimal (normalised), F float
(IEEE-754 big-endian, -0.0 as 0.0), S text, Y bytes, U uuid (16 bytes),
T aware timestamp (UTC ISO 8601), L naive timestamp, d date, t time.
So 1 and "1" differ, True and 1 differ, and Decimal("1.0") equals Decimal("1.00")
(as in the database, where they are the same key).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from hashlib import sha256
from typing import Any, Final

from agent.crypto.keyfiles import KeyhashKey

_DOMAIN = b"changevault-keyhash-v1\x00"
_U32: Final = struct.Struct(">I").pack
# Row-key layouts cached per (schema, table, key column names in the dict's
# order); a few hundred tables with a key shape or two each fit easily.
_MAX_PLANS: Final = 4096
_SHA256_BLOCK: Final = 64


def _item(tag: bytes, data: bytes) -> bytes:
    return tag + _U32(len(data)) + data


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        return str(value)  # NaN, Infinity, -Infinity
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def encode_value(value: Any) -> bytes:
    """The typed, length-prefixed encoding of one key value."""
    if value is None:
        return _item(b"N", b"")
    if isinstance(value, bool):  # before int: bool is an int subclass
        return _item(b"B", b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _item(b"I", str(value).encode("ascii"))
    if isinstance(value, Decimal):
        return _item(b"D", _decimal_text(value).encode("ascii"))
    if isinstance(value, float):
        return _item(b"F", struct.pack(">d", value + 0.0 if value == 0 else value))
    if isinstance(value, str):
        return _item(b"S", value.encode("utf-8"))
    if isinstance(value, bytes | bytearray | memoryview):
        return _item(b"Y", bytes(value))
    if isinstance(value, uuid.UUID):
        return _item(b"U", value.bytes)
    if isinstance(value, datetime):  # before date: datetime is a date subclass
        if value.tzinfo is not None and value.utcoffset() is not None:
            return _item(b"T", value.astimezone(UTC).isoformat().encode("ascii"))
        return _item(b"L", value.isoformat().encode("ascii"))
    if isinstance(value, date):
        return _item(b"d", value.isoformat().encode("ascii"))
    if isinstance(value, time):
        return _item(b"t", value.isoformat().encode("ascii"))
    raise TypeError(f"keyhash: cannot encode a primary-key value of type {type(value).__name__}")


def _encode_int_or_value(value: Any) -> bytes:
    """encode_value, with the common key type (a plain int) first."""
    if type(value) is int:
        text = b"%d" % value
        return b"I" + _U32(len(text)) + text
    return encode_value(value)


def _row_key_plan(
    schema: str, table: str, names: tuple[str, ...]
) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    """encode_row_key's constant parts for one key shape: everything up to the first
    column, and per column (sorted by UTF-8 name) its name item."""
    ordered = sorted(names, key=lambda n: n.encode("utf-8"))
    head = b"".join(
        [
            _DOMAIN,
            _item(b"K", b"row"),
            _item(b"S", schema.encode("utf-8")),
            _item(b"S", table.encode("utf-8")),
            _U32(len(ordered)),
        ]
    )
    return head, tuple((n, _item(b"S", n.encode("utf-8"))) for n in ordered)


def encode_row_key(schema: str, table: str, primary_key: Mapping[str, Any]) -> bytes:
    """The canonical bytes of (schema, table, primary key) that `KeyHasher` MACs."""
    columns = sorted(primary_key.items(), key=lambda kv: kv[0].encode("utf-8"))
    parts = [
        _DOMAIN,
        _item(b"K", b"row"),
        _item(b"S", schema.encode("utf-8")),
        _item(b"S", table.encode("utf-8")),
        struct.pack(">I", len(columns)),
    ]
    for name, value in columns:
        parts += [_item(b"S", name.encode("utf-8")), encode_value(value)]
    return b"".join(parts)


class KeyHasher:
    """HMAC-SHA256 under keyhash.key; 32-byte outputs reveal nothing about the key."""

    def __init__(self, key: KeyhashKey) -> None:
        # HMAC (RFC 2104) with the key's inner and outer pad states hashed once:
        # per MAC only the message and the inner digest are hashed (this runs
        # once per captured change; hmac.new/hmac.digest redo the pads each time).
        secret = key.secret
        if len(secret) > _SHA256_BLOCK:
            secret = sha256(secret).digest()
        secret = secret.ljust(_SHA256_BLOCK, b"\x00")
        self._inner = sha256(bytes(b ^ 0x36 for b in secret))
        self._outer = sha256(bytes(b ^ 0x5C for b in secret))
        self._plans: dict[
            tuple[str, str, tuple[str, ...]], tuple[bytes, tuple[tuple[str, bytes], ...]]
        ] = {}

    def _mac(self, data: bytes) -> bytes:
        """HMAC-SHA256(keyhash.key, data)."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def row_key(self, schema: str, table: str, primary_key: Mapping[str, Any]) -> bytes:
        """The Kafka message key / index entry of one row: the MAC of exactly
        `encode_row_key(schema, table, primary_key)`, built from cached parts
        (this runs once per captured change)."""
        names = tuple(primary_key)
        plan = self._plans.get((schema, table, names))
        if plan is None:
            plan = _row_key_plan(schema, table, names)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[(schema, table, names)] = plan
        head, columns = plan
        if len(columns) == 1:
            name, name_item = columns[0]
            data = head + name_item + _encode_int_or_value(primary_key[name])
        else:
            parts = [head]
            for name, name_item in columns:
                parts.append(name_item)
                parts.append(_encode_int_or_value(primary_key[name]))
            data = b"".join(parts)
        return self._mac(data)

    def column_value(self, schema: str, table: str, column: str, value: Any) -> bytes:
        """An index entry for an entity value (e.g. customers.id = 42)."""
        return self._mac(
            _DOMAIN
            + _item(b"K", b"column")
            + _item(b"S", schema.encode("utf-8"))
            + _item(b"S", table.encode("utf-8"))
            + _item(b"S", column.encode("utf-8"))
            + encode_value(value)
        )

    def reserved(self, schema: str, table: str, name: str) -> bytes:
        """A key no row can have (e.g. name="truncate"): a different kind tag."""
        return self._mac(
            _DOMAIN
            + _item(b"K", b"reserved")
            + _item(b"S", schema.encode("utf-8"))
            + _item(b"S", table.encode("utf-8"))
            + _item(b"S", name.encode("utf-8"))
        )
