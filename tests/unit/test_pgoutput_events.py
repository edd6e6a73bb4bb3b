"""Recorded pgoutput bytes -> ChangeEvents: keys, before/after, unchanged TOAST, versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import DecodeError
from agent.events import ChangeEvent, TableSchema
from connectors.postgres.pgoutput import (
    Begin,
    Insert,
    Message,
    PgoutputDecoder,
    Relation,
    RelationColumn,
    StreamStart,
    TypeInfoMessage,
)
from connectors.postgres.pgtypes import TypeConverters, TypeInfo
from connectors.postgres.relations import EventBuilder, RelationHistory

DATA = Path(__file__).parent / "data" / "pgoutput"
BIG = "".join(__import__("hashlib").md5(str(i).encode()).hexdigest() for i in range(1, 201))


def messages(name: str) -> list[Message]:
    decoder = PgoutputDecoder(2)
    with (DATA / name).open() as fh:
        return [decoder.decode(bytes.fromhex(json.loads(line)["data"])) for line in fh]


def catalog_for(msgs: list[Message]) -> dict[int, TypeInfo]:
    """What the Source's pg_type resolver would answer for the recorded types."""
    types = {m.name: m.oid for m in msgs if isinstance(m, TypeInfoMessage)}
    return {
        types["mood"]: TypeInfo(types["mood"], "mood", "e"),
        types["int4"]: TypeInfo(types["int4"], "posint", "d", base_oid=23),
    }


def build(name: str) -> tuple[list[ChangeEvent], list[TableSchema], RelationHistory]:
    msgs = messages(name)
    catalog = catalog_for(msgs)
    history = RelationHistory(
        TypeConverters(catalog.get),
        primary_key=lambda rel: ("id",) if rel.name == "t_full" else None,
    )
    builder = EventBuilder(history)
    schemas: list[TableSchema] = []
    events = list(builder.transaction_events(msgs, lsn=0, new_schemas=schemas))
    return events, schemas, history


@pytest.fixture(scope="module")
def recorded() -> tuple[list[ChangeEvent], list[TableSchema], RelationHistory]:
    return build("proto1.jsonl")


def test_insert_values_typed(
    recorded: tuple[list[ChangeEvent], list[TableSchema], RelationHistory],
) -> None:
    events = recorded[0]
    first = events[0]
    assert (first.op, first.schema, first.table, first.schema_version) == (
        "c",
        "public",
        "t_default",
        1,
    )
    assert first.key == {"id": 1} and first.before is None and first.unchanged == ()
    assert first.after == {
        "id": 1, "name": "one", "big": BIG, "amount": "12.50",
        "at": "2024-02-29T12:34:56.789+00:00", "feeling": "happy", "score": 7,
        "tags": ["a", "b c", None, 'd"e'],
    }  # fmt: skip
    assert events[1].after == {"id": 2} | dict.fromkeys(
        ["name", "big", "amount", "at", "feeling", "score", "tags"]
    )
    assert events[2].after is not None and events[2].after["tags"] == []
    assert events[2].after["at"] == "-infinity"


def test_unchanged_toast_under_default_identity(
    recorded: tuple[list[ChangeEvent], list[TableSchema], RelationHistory],
) -> None:
    update = recorded[0][3]
    assert update.op == "u" and update.key == {"id": 1}
    assert update.before == {"id": 1}  # no old tuple: only the key, from the new row
    assert update.unchanged == ("big",)
    assert update.after is not None and "big" not in update.after
    assert update.after["name"] == "uno"


def test_key_change_and_delete_under_default_identity(
    recorded: tuple[list[ChangeEvent], list[TableSchema], RelationHistory],
) -> None:
    key_change, delete = recorded[0][4:6]
    assert (key_change.op, key_change.key, key_change.before) == ("u", {"id": 20}, {"id": 2})
    assert key_change.after is not None and key_change.after["id"] == 20
    assert (delete.op, delete.key, delete.before, delete.after) == ("d", {"id": 3}, {"id": 3}, None)


def test_full_identity_fills_unchanged_from_before(
    recorded: tuple[list[ChangeEvent], list[TableSchema], RelationHistory],
) -> None:
    insert, update, delete = recorded[0][6:9]
    assert insert.key == {"id": 1}  # the primary key, not every FULL-flagged column
    assert update.before == {"id": 1, "note": "first", "payload": BIG}
    assert update.after == {"id": 1, "note": "second", "payload": BIG}
    assert update.unchanged == ()
    assert delete.before == {"id": 1, "note": "second", "payload": BIG} and delete.key == {"id": 1}


def test_truncate_events(
    recorded: tuple[list[ChangeEvent], list[TableSchema], RelationHistory],
) -> None:
    truncates = [e for e in recorded[0] if e.op == "t"]
    assert [(e.table, e.key, e.before, e.after) for e in truncates] == [
        ("t_parent", None, None, None),
        ("t_child", None, None, None),
    ]
    assert truncates[1].seq == truncates[0].seq + 1


def test_schema_versions_and_history(
    recorded: tuple[list[ChangeEvent], list[TableSchema], RelationHistory],
) -> None:
    events, schemas, _history = recorded
    assert [e.seq for e in events] == list(range(len(events)))
    t_default = [s for s in schemas if s.table == "t_default"]
    assert [s.version for s in t_default] == [1, 2]
    assert [(c.name, c.type_name) for c in t_default[0].columns] == [
        ("id", "integer"), ("name", "character varying(40)"), ("big", "text"),
        ("amount", "numeric(12,2)"), ("at", "timestamp with time zone"), ("feeling", "mood"),
        ("score", "posint"), ("tags", "text[]"),
    ]  # fmt: skip
    assert t_default[0].primary_key == ("id",)
    assert (
        t_default[1].columns[-1].name == "extra" and t_default[1].columns[-1].type_name == "bigint"
    )
    after_ddl = next(e for e in events if e.key == {"id": 4})
    assert after_ddl.schema_version == 2 and after_ddl.after is not None
    assert after_ddl.after["extra"] == 9000000000
    # Relation messages re-sent without DDL (t_parent before the truncate) add no version.
    assert [s.version for s in schemas if s.table == "t_parent"] == [1]
    assert len([e for e in events if e.table == "t_bulk"]) == 1501


def test_history_by_position_and_seeding() -> None:
    history = RelationHistory(TypeConverters())
    cols = (RelationColumn("id", 20, -1, True),)
    rel_v1 = Relation(None, 77, "app", "t", "d", cols)
    rel_v2 = Relation(None, 77, "app", "t", "d", (*cols, RelationColumn("v", 25, -1, False)))
    assert history.apply(rel_v1, lsn=100) is not None
    assert history.apply(rel_v1, lsn=150) is None  # same shape: no new version
    v2 = history.apply(rel_v2, lsn=200)
    assert v2 is not None and v2.version == 2
    assert history.at(77, 120).schema.version == 1
    assert history.at(77, 200).schema.version == 2
    assert history.at(77, 50).schema.version == 1
    assert history.current(77).schema.version == 2
    # A restarted agent seeded with what it saved keeps numbering.
    restarted = RelationHistory(TypeConverters())
    for schema in history.schemas():
        restarted.seed(schema)
    assert restarted.apply(rel_v2, lsn=300) is None
    assert restarted.current(77).schema.version == 2
    v3 = restarted.apply(rel_v1, lsn=400)  # the column dropped again: a new shape
    assert v3 is not None and v3.version == 3
    with pytest.raises(DecodeError, match="relation 78"):
        restarted.current(78)


def test_row_of_wrong_width_is_a_decode_error() -> None:
    history = RelationHistory(TypeConverters())
    history.apply(Relation(None, 5, "s", "t", "d", (RelationColumn("id", 23, -1, True),)))
    builder = EventBuilder(history)
    with pytest.raises(DecodeError, match="expected 1 columns"):
        builder.insert(Insert(None, 5, (b"1", b"2")), 0)
    with pytest.raises(DecodeError, match=r"s\.t"):
        builder.insert(Insert(None, 5, (b"x",)), 0)


def test_streamed_transaction_events() -> None:
    msgs = messages("proto2_stream.jsonl")
    catalog = catalog_for(msgs)
    builder = EventBuilder(RelationHistory(TypeConverters(catalog.get)))
    # Everything before the first stream, as the Source would replay it.
    first_stream = next(i for i, m in enumerate(msgs) if isinstance(m, StreamStart))
    assert sum(isinstance(m, Begin) for m in msgs[:first_stream]) == 12
    events = list(builder.transaction_events(msgs[:first_stream]))
    assert events[-1].after is not None and events[-1].after["extra"] == 9000000000


def test_binary_values_are_refused() -> None:
    msgs = messages("proto1_binary.jsonl")
    builder = EventBuilder(RelationHistory(TypeConverters(catalog_for(msgs).get)))
    with pytest.raises(DecodeError, match="binary"):
        list(builder.transaction_events(msgs))
