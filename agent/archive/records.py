"""Plaintext records inside a segment (before compression and sealing).

A segment's plaintext is a sequence of length-prefixed records. Transactions
may span segments (a 1,000,000-row transaction does), so readers apply a
transaction only when its `TxEndRecord` has been read: restore stays
transaction-consistent without holding a transaction in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from agent.checkpoint import position_from_json, position_to_json
from agent.errors import DecodeError
from agent.events import Column, ForeignKey, Index, Position, TableSchema

# One byte of record kind, then a 4-byte big-endian length, then the body.
_HEAD = struct.Struct(">BI")
KIND_BEGIN = 1
KIND_EVENT = 2
KIND_END = 3
KIND_SCHEMA = 4
MAX_RECORD = 256 * 1024 * 1024
# What a well-formed JSON body of the wrong shape raises on the way to a record:
# missing keys, wrong types, Infinity where an integer belongs, deep nesting.
_MALFORMED = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError)


@dataclass(frozen=True, slots=True)
class TxBeginRecord:
    position: Position
    txid: str
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    envelope: bytes  # the CONTRACT.md JSON envelope


@dataclass(frozen=True, slots=True)
class TxEndRecord:
    position: Position
    events: int


@dataclass(frozen=True, slots=True)
class SchemaRecord:
    table: TableSchema


Record = TxBeginRecord | EventRecord | TxEndRecord | SchemaRecord


def schema_to_json(t: TableSchema) -> dict[str, Any]:
    return {
        "schema": t.schema,
        "table": t.table,
        "version": t.version,
        "columns": [[c.name, c.type_name, c.nullable, c.default] for c in t.columns],
        "primary_key": list(t.primary_key),
        "foreign_keys": [
            [f.name, list(f.columns), f.ref_schema, f.ref_table, list(f.ref_columns), f.on_delete]
            for f in t.foreign_keys
        ],
        "indexes": [[i.name, list(i.columns), i.unique] for i in t.indexes],
    }


def schema_from_json(d: dict[str, Any]) -> TableSchema:
    return TableSchema(
        schema=d["schema"],
        table=d["table"],
        version=int(d["version"]),
        columns=tuple(Column(n, t, bool(nl), df) for n, t, nl, df in d["columns"]),
        primary_key=tuple(d["primary_key"]),
        foreign_keys=tuple(
            ForeignKey(n, tuple(c), rs, rt, tuple(rc), od)
            for n, c, rs, rt, rc, od in d["foreign_keys"]
        ),
        indexes=tuple(Index(n, tuple(c), bool(u)) for n, c, u in d["indexes"]),
    )


def encode_record(rec: Record) -> bytes:
    if isinstance(rec, EventRecord):
        return _HEAD.pack(KIND_EVENT, len(rec.envelope)) + rec.envelope
    if isinstance(rec, TxBeginRecord):
        kind = KIND_BEGIN
        doc: dict[str, Any] = {
            "position": position_to_json(rec.position),
            "txid": rec.txid,
            "commit_ts": rec.commit_ts.isoformat(),
        }
    elif isinstance(rec, TxEndRecord):
        kind = KIND_END
        doc = {"position": position_to_json(rec.position), "events": rec.events}
    else:
        kind = KIND_SCHEMA
        doc = schema_to_json(rec.table)
    body = json.dumps(doc, separators=(",", ":")).encode()
    return _HEAD.pack(kind, len(body)) + body


def _decode_body(kind: int, body: bytes) -> Record:
    if kind == KIND_EVENT:
        return EventRecord(body)
    try:
        doc = json.loads(body)
        if kind == KIND_BEGIN:
            return TxBeginRecord(
                position_from_json(doc["position"]),
                str(doc["txid"]),
                datetime.fromisoformat(doc["commit_ts"]),
            )
        if kind == KIND_END:
            return TxEndRecord(position_from_json(doc["position"]), int(doc["events"]))
        if kind == KIND_SCHEMA:
            return SchemaRecord(schema_from_json(doc))
    except _MALFORMED as exc:
        raise DecodeError(f"malformed segment record (kind {kind}): {type(exc).__name__}") from None
    raise DecodeError(f"unknown segment record kind {kind}")


def read_records(stream: IO[bytes]) -> Iterator[Record]:
    """Records from a decompressed plaintext stream, in bounded memory."""
    for (kind, _length), body in frames(stream, _HEAD, MAX_RECORD):
        yield _decode_body(kind, body)


_BLOCK = 1024 * 1024


def frames(
    stream: IO[bytes], head: struct.Struct, limit: int
) -> Iterator[tuple[tuple[Any, ...], bytes]]:
    """(header fields, body) of each frame: a header whose last field is the body's
    length, then the body. Read a block at a time and cut frames out of it, in
    bounded memory (a block plus one frame of at most `limit` bytes): two reads
    per frame cost more than decoding it."""
    buf, pos = b"", 0
    while True:
        if len(buf) - pos < head.size:
            buf, pos = _refill(stream, buf, pos, head.size)
            if pos == len(buf):
                return
            if len(buf) - pos < head.size:
                raise DecodeError("segment plaintext ends inside a record header")
        fields = head.unpack_from(buf, pos)
        length = fields[-1]
        if length > limit:
            raise DecodeError(f"segment record of {length} bytes exceeds the limit")
        end = pos + head.size + length
        if end > len(buf):
            buf, pos = _refill(stream, buf, pos, head.size + length)
            end = pos + head.size + length
            if end > len(buf):
                raise DecodeError("segment plaintext ends inside a record")
        yield fields, buf[pos + head.size : end]
        pos = end


def _refill(stream: IO[bytes], buf: bytes, pos: int, need: int) -> tuple[bytes, int]:
    """buf[pos:] followed by more of the stream, until `need` bytes or its end."""
    parts = [buf[pos:]]
    have = len(parts[0])
    while have < need:
        more = stream.read(max(_BLOCK, need - have))
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts), 0
