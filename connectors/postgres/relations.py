"""Relation cache with history, and decoded pgoutput rows -> ChangeEvents.

pgoutput sends a Relation message before the first change of a table in a
session and again after every DDL that touches it, so the decoder always
knows the shape that applies to the rows that follow. Each distinct shape
(names, column names, types, key) gets a schema version, increasing per table;
the history keeps every version with the LSN where it started, so a position
can be decoded with the shape it was written with, never with today's
catalog.

Rows reach events on one of two paths: `payload_events` runs each relation's
compiled decoder (rowdecoder.py) straight over the raw message, the hot path;
anything it declines goes through decode_message and `decode_row`, the general
path, which is the reference both must agree with.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from agent.errors import DecodeError
from agent.events import ChangeEvent, Column, Op, Row, TableSchema
from connectors.postgres.pgoutput import (
    REPLICA_IDENTITY_FULL,
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    TupleData,
    TypeInfoMessage,
    Update,
    decode_message,
)
from connectors.postgres.pgtypes import Converter, TypeConverters, TypeResolver, format_type
from connectors.postgres.rowdecoder import PADDING, RowDecoder, compile_row_decoder

# Under REPLICA IDENTITY FULL pgoutput flags every column as key, so the primary
# key has to come from the catalog: the Source supplies this (pg_index lookup).
PrimaryKeyResolver = Callable[[Relation], "tuple[str, ...] | None"]


@dataclass(frozen=True, slots=True)
class RelationVersion:
    """One shape of one relation, with everything the hot path needs precompiled."""

    relation: Relation
    schema: TableSchema
    from_lsn: int
    names: tuple[str, ...]
    converters: tuple[Converter, ...]
    key_names: tuple[str, ...]
    identity_full: bool
    row_decoder: RowDecoder | None = None  # the compiled fast path (rowdecoder.py)


def _shape(schema: TableSchema) -> tuple[Any, ...]:
    return (
        schema.schema,
        schema.table,
        tuple((c.name, c.type_name) for c in schema.columns),
        schema.primary_key,
    )


class RelationHistory:
    """Relation messages -> versioned TableSchemas, per relid and per position."""

    __slots__ = ("_by_relid", "_current", "_latest", "converters", "primary_key", "resolver")

    def __init__(
        self,
        converters: TypeConverters,
        resolver: TypeResolver | None = None,
        primary_key: PrimaryKeyResolver | None = None,
    ) -> None:
        self.converters = converters
        self.resolver = resolver if resolver is not None else converters.resolver
        self.primary_key = primary_key
        self._latest: dict[tuple[str, str], TableSchema] = {}
        self._by_relid: dict[int, list[RelationVersion]] = {}
        self._current: dict[int, RelationVersion] = {}

    def seed(self, schema: TableSchema) -> None:
        """The newest known version of a table (from saved state), so a restarted
        agent keeps numbering versions where it left off."""
        known = self._latest.get((schema.schema, schema.table))
        if known is None or known.version <= schema.version:
            self._latest[(schema.schema, schema.table)] = schema

    def note_type(self, msg: TypeInfoMessage) -> None:
        self.converters.note_type(msg.oid, msg.namespace, msg.name)

    def apply(self, rel: Relation, lsn: int = 0) -> TableSchema | None:
        """Record a Relation message seen at `lsn`; returns the schema when it is a
        shape not seen before for this table (a new version), else None."""
        namespace = rel.namespace or "pg_catalog"
        key_names = tuple(c.name for c in rel.columns if c.is_key)
        if rel.replica_identity == REPLICA_IDENTITY_FULL and self.primary_key is not None:
            key_names = self.primary_key(rel) or key_names
        columns = tuple(
            Column(
                c.name, format_type(c.type_oid, c.typmod, self.resolver, self.converters.warnings)
            )
            for c in rel.columns
        )
        schema = TableSchema(namespace, rel.name, columns, key_names)
        latest = self._latest.get((namespace, rel.name))
        new_schema: TableSchema | None = None
        if latest is not None and _shape(latest) == _shape(schema):
            schema = latest
        else:
            version = latest.version + 1 if latest is not None else 1
            schema = new_schema = TableSchema(namespace, rel.name, columns, key_names, version)
            self._latest[(namespace, rel.name)] = schema
        names = tuple(c.name for c in rel.columns)
        converters = self.converters.row(tuple(c.type_oid for c in rel.columns))
        entry = RelationVersion(
            relation=rel,
            schema=schema,
            from_lsn=lsn,
            names=names,
            converters=converters,
            key_names=key_names,
            identity_full=rel.replica_identity == REPLICA_IDENTITY_FULL,
            row_decoder=compile_row_decoder(names, converters, key_names),
        )
        self._current[rel.relid] = entry
        versions = self._by_relid.setdefault(rel.relid, [])
        bisect.insort(versions, entry, key=lambda v: v.from_lsn)
        return new_schema

    @property
    def current_versions(self) -> Mapping[int, RelationVersion]:
        """relid -> the shape of its last Relation message; a live view."""
        return self._current

    def current(self, relid: int) -> RelationVersion:
        """The shape of the last Relation message for `relid` (what pgoutput uses)."""
        try:
            return self._current[relid]
        except KeyError:
            raise DecodeError(
                f"expected a Relation message for relation {relid} before its rows, found none"
            ) from None

    def at(self, relid: int, lsn: int) -> RelationVersion:
        """The shape that applied at `lsn` (the newest version starting at or before it)."""
        versions = self._by_relid.get(relid)
        if not versions:
            raise DecodeError(f"expected a known relation {relid}, found no history")
        i = bisect.bisect_right(versions, lsn, key=lambda v: v.from_lsn)
        return versions[max(i - 1, 0)]

    def schemas(self) -> list[TableSchema]:
        """The newest version of every table seen or seeded (for saving state)."""
        return list(self._latest.values())


def decode_row(rv: RelationVersion, values: TupleData) -> tuple[Row, list[str] | None]:
    """TupleData -> (column values by name, names of unchanged-TOAST columns or None)."""
    names = rv.names
    if len(values) != len(names):
        raise DecodeError(
            f"expected {len(names)} columns for {rv.schema.qualified}, found {len(values)}"
        )
    try:
        if type(values) is tuple:  # only bytes and None (see MixedTupleData)
            return {
                name: None if raw is None else conv(raw)  # type: ignore[arg-type]
                for name, conv, raw in zip(names, rv.converters, values, strict=True)
            }, None
        row: Row = {}
        unchanged: list[str] | None = None
        for name, conv, raw in zip(names, rv.converters, values, strict=True):
            if type(raw) is bytes:
                row[name] = conv(raw)
            elif raw is None:
                row[name] = None
            elif raw is UNCHANGED_TOAST:
                if unchanged is None:
                    unchanged = []
                unchanged.append(name)
            else:
                raise DecodeError(
                    f"expected text column values in {rv.schema.qualified}.{name}, found binary"
                )
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"expected a valid value for a column of {rv.schema.qualified}: {exc}"
        ) from exc
    return row, unchanged


def _event_factory() -> Callable[..., ChangeEvent]:
    """ChangeEvent's generated __init__ sets each field through object.__setattr__
    (frozen), about 1 µs per event on the hot path; writing the slots directly
    builds an equal object. Falls back to the constructor if the class changes."""
    names = tuple(f.name for f in fields(ChangeEvent))
    expected = (
        "op", "schema", "table", "seq", "key", "before", "after", "schema_version", "unchanged",
    )  # fmt: skip
    if names != expected or hasattr(ChangeEvent, "__post_init__"):
        return ChangeEvent
    s_op, s_schema, s_table, s_seq, s_key, s_before, s_after, s_version, s_unchanged = (
        getattr(ChangeEvent, name).__set__ for name in names
    )
    new = object.__new__

    def make(
        op: Op, schema: str, table: str, seq: int, key: Row | None, before: Row | None,
        after: Row | None, version: int, unchanged: tuple[str, ...],
    ) -> ChangeEvent:  # fmt: skip
        event: ChangeEvent = new(ChangeEvent)
        s_op(event, op)
        s_schema(event, schema)
        s_table(event, table)
        s_seq(event, seq)
        s_key(event, key)
        s_before(event, before)
        s_after(event, after)
        s_version(event, version)
        s_unchanged(event, unchanged)
        return event

    return make


_new_event: Final = _event_factory()


def _pick(row: Row, names: tuple[str, ...]) -> Row:
    return {n: row[n] for n in names if n in row}


class EventBuilder:
    """Turns decoded Insert/Update/Delete/Truncate messages into ChangeEvents."""

    __slots__ = ("history",)

    def __init__(self, history: RelationHistory) -> None:
        self.history = history

    def insert(self, msg: Insert, seq: int) -> ChangeEvent:
        rv = self.history.current(msg.relid)
        after, unchanged = decode_row(rv, msg.new)
        s = rv.schema
        key = {n: after[n] for n in rv.key_names}
        return _new_event(
            "c", s.schema, s.table, seq, key, None, after, s.version, tuple(unchanged or ())
        )

    def update(self, msg: Update, seq: int) -> ChangeEvent:
        rv = self.history.current(msg.relid)
        after, unchanged = decode_row(rv, msg.new)
        s = rv.schema
        before: Row
        if msg.old is None:  # key unchanged: the log carried no old tuple
            before = _pick(after, rv.key_names)
        else:
            old, _ = decode_row(rv, msg.old)
            before = old if msg.old_kind == "O" else _pick(old, rv.key_names)
        if unchanged and msg.old_kind == "O":
            # REPLICA IDENTITY FULL: the old tuple holds the value the update kept.
            for name in unchanged:
                after[name] = before[name]
            unchanged = None
        return _new_event(
            "u", s.schema, s.table, seq, _pick(after, rv.key_names) or _pick(before, rv.key_names),
            before, after, s.version, tuple(unchanged or ()),
        )  # fmt: skip

    def delete(self, msg: Delete, seq: int) -> ChangeEvent:
        rv = self.history.current(msg.relid)
        old, _ = decode_row(rv, msg.old)
        s = rv.schema
        key = _pick(old, rv.key_names)
        before = old if msg.old_kind == "O" else key
        return _new_event("d", s.schema, s.table, seq, key, before, None, s.version, ())

    def truncate(self, msg: Truncate, seq: int) -> list[ChangeEvent]:
        """One `t` event per truncated relation, numbered from `seq`."""
        events = []
        for i, relid in enumerate(msg.relids):
            s = self.history.current(relid).schema
            events.append(ChangeEvent("t", s.schema, s.table, seq + i, None, None, None, s.version))
        return events

    def transaction_events(
        self,
        messages: Iterable[Message],
        lsn: int = 0,
        new_schemas: list[TableSchema] | None = None,
    ) -> Iterator[ChangeEvent]:
        """The events of one transaction's messages, `seq` from 0.

        Relation and Type messages inside it are applied to the history (at
        `lsn`); shapes new to the history are appended to `new_schemas`.
        Begin/Commit/Origin/Message/Stream* messages are skipped.
        """
        seq = 0
        for msg in messages:
            events = self._message_events(msg, seq, lsn, new_schemas)
            yield from events
            seq += len(events)

    def payload_events(
        self,
        payloads: Iterable[bytes],
        in_stream: bool = False,
        lsn: int = 0,
        new_schemas: list[TableSchema] | None = None,
    ) -> Iterator[ChangeEvent]:
        """`transaction_events` over raw pgoutput messages (`in_stream`: they carry
        an xid). A row of a relation with a compiled decoder becomes its event
        without message objects; every other message, and any row the compiled
        decoder declines, takes the general path, which gives the same events."""
        current = self.history.current_versions
        relid_at = 5 if in_stream else 1
        seq = 0
        for payload in payloads:
            try:
                event = _compiled_event(current, payload, relid_at, seq)
            except Exception:  # the general path below decodes it, or says why not
                event = None
            if event is not None:
                yield event
                seq += 1
                continue
            events = self._message_events(
                decode_message(payload, in_stream=in_stream), seq, lsn, new_schemas
            )
            yield from events
            seq += len(events)

    def _message_events(
        self, msg: Message, seq: int, lsn: int, new_schemas: list[TableSchema] | None
    ) -> list[ChangeEvent]:
        if isinstance(msg, Insert):
            return [self.insert(msg, seq)]
        if isinstance(msg, Update):
            return [self.update(msg, seq)]
        if isinstance(msg, Delete):
            return [self.delete(msg, seq)]
        if isinstance(msg, Truncate):
            return self.truncate(msg, seq)
        if isinstance(msg, Relation):
            schema = self.history.apply(msg, lsn)
            if schema is not None and new_schemas is not None:
                new_schemas.append(schema)
        elif isinstance(msg, TypeInfoMessage):
            self.history.note_type(msg)
        return []


_U32: Final = struct.Struct(">I").unpack_from
_ROW_TAGS: Final = frozenset(b"IUD")
_NEW, _KEY, _OLD = 0x4E, 0x4B, 0x4F  # 'N', 'K', 'O' before a TupleData


def _compiled_event(
    versions: Mapping[int, RelationVersion], buf: bytes, relid_at: int, seq: int
) -> ChangeEvent | None:
    """An Insert/Update/Delete decoded by its relation's compiled decoder: the same
    event EventBuilder.insert/update/delete builds. None, or an exception, sends
    the message to the general path (other messages, other relations, odd rows)."""
    tag = buf[0]
    if tag not in _ROW_TAGS:
        return None
    rv = versions.get(_U32(buf, relid_at)[0])
    if rv is None or (decode := rv.row_decoder) is None:
        return None
    pos = relid_at + 4
    marker = buf[pos]
    end = len(buf)
    buf += PADDING
    op: Op
    before: Row | None
    after: Row | None
    if tag == 0x49:  # 'I'
        if marker != _NEW:
            return None
        after, key, pos = decode(buf, pos + 1)
        op, before = "c", None
    elif tag == 0x55:  # 'U'
        if marker == _NEW:  # key unchanged: the log carried no old tuple
            after, key, pos = decode(buf, pos + 1)
            before = key.copy()
        elif marker in (_KEY, _OLD):
            old, old_key, pos = decode(buf, pos + 1)
            before = old if marker == _OLD else old_key
            if buf[pos] != _NEW:
                return None
            after, key, pos = decode(buf, pos + 1)
        else:
            return None
        op = "u"
    else:  # 'D'
        if marker not in (_KEY, _OLD):
            return None
        old, key, pos = decode(buf, pos + 1)
        op, before, after = "d", old if marker == _OLD else key, None
    if pos != end:
        return None
    s = rv.schema
    return _new_event(op, s.schema, s.table, seq, key, before, after, s.version, ())
