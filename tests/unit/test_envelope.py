"""The envelope encoder's cached fragments give exactly the JSON of the whole document."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import fastjson
from agent.envelope import EnvelopeEncoder, decode_envelope
from agent.errors import UncapturableChange
from agent.events import ChangeEvent, Position, event_id

TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ROWS = st.none() | st.dictionaries(TEXT, VALUES, max_size=4)


def reference(
    connector: str, database: str, ev: ChangeEvent, position: Position, txid: str, ts: str
) -> tuple[str, bytes]:
    eid = event_id(connector, database, position, ev.seq)
    doc: dict[str, Any] = {
        "id": eid,
        "op": ev.op,
        "source": {
            "connector": connector, "database": database, "schema": ev.schema, "table": ev.table,
            "position": position.text, "txid": txid, "seq": ev.seq, "commit_ts": ts,
            "schema_version": ev.schema_version,
        },
        "key": ev.key, "before": ev.before, "after": ev.after, "unchanged": list(ev.unchanged),
    }  # fmt: skip
    try:
        return eid, orjson.dumps(doc)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the stdlib's text
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return eid, text.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(
    names=st.tuples(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT),
    op=st.sampled_from(["c", "u", "d", "t", "r"]),
    seq=st.integers(0, 10**9),
    version=st.integers(1, 10**6),
    rows=st.tuples(ROWS, ROWS, ROWS),
    unchanged=st.lists(TEXT, max_size=2),
)
def test_envelope_is_json_dumps_of_the_document(
    names: tuple[str, ...], op: Any, seq: int, version: int,
    rows: tuple[Any, Any, Any], unchanged: list[str],
) -> None:  # fmt: skip
    connector, database, schema, table, lsn, txid, ts = names
    encoder = EnvelopeEncoder(connector, database)
    ev = ChangeEvent(op, schema, table, seq, *rows, version, tuple(unchanged))
    position = Position(lsn, (1,))
    for _ in range(2):  # the second time from the caches
        assert encoder.encode(ev, position, txid, ts) == reference(
            connector, database, ev, position, txid, ts
        )
    decoded = decode_envelope(encoder.encode(ev, position, txid, ts)[1])
    assert decoded["after"] == ev.after and decoded["before"] == ev.before
    expected = json.loads(reference(connector, database, ev, position, txid, ts)[1])
    assert decoded == expected


def test_integers_beyond_64_bits_and_floats_survive() -> None:
    row = {"big": 2**70, "neg": -(2**65), "u64": 2**64 - 1, "small": 1e-7, "x": 0.1}
    ev = ChangeEvent("c", "s", "t", 0, None, None, row)
    _eid, data = EnvelopeEncoder("postgres", "db").encode(ev, Position("0/1", (1,)), "1", "ts")
    assert json.loads(data)["after"] == row


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_not_written_as_null(value: float) -> None:
    for ev in (
        ChangeEvent("c", "s", "t", 0, None, None, {"x": value}),
        ChangeEvent("u", "s", "t", 0, None, {"x": value}, {"x": 1.0}),
    ):
        with pytest.raises(UncapturableChange):
            EnvelopeEncoder("postgres", "db").encode(ev, Position("0/1", (1,)), "1", "ts")


@pytest.mark.parametrize("doc", [
    {"a": [1, {"b": float("inf")}]},
    [float("-inf")],
    {"deep": {"er": [[1e400]]}},
])
def test_a_plain_non_finite_float_inside_a_document_is_refused(doc: Any) -> None:
    # orjson would write it as null. (The PostgreSQL source never makes one: its
    # json numbers are JsonNumbers, see the next test.)
    ev = ChangeEvent("c", "s", "t", 0, None, None, {"id": 1, "doc": doc})
    with pytest.raises(UncapturableChange, match="non-finite float"):
        EnvelopeEncoder("postgres", "db").encode(ev, Position("0/1", (1,)), "1", "ts")


def test_exact_json_numbers_are_written_as_their_text() -> None:
    # What pgtypes makes of a json column: 1.50 is not 1.5 to jsonb, 1e400 is
    # valid JSON, and 17+ significant digits must not round through a double.
    doc = fastjson.loads_exact('{"a": [1.50, 1e400, -0.0, 12345678901234567890.123456789], "n": 10}')
    ev = ChangeEvent("c", "s", "t", 0, None, None, {"id": 1, "doc": doc})
    _eid, data = EnvelopeEncoder("postgres", "db").encode(ev, Position("0/1", (1,)), "1", "ts")
    assert b'"doc":{"a":[1.50,1e400,-0.0,12345678901234567890.123456789],"n":10}' in data


def test_json_documents_with_finite_numbers_pass() -> None:
    ev = ChangeEvent("c", "s", "t", 0, None, None, {"doc": {"a": [1.5, None, {"b": -2e300}]}})
    _eid, data = EnvelopeEncoder("postgres", "db").encode(ev, Position("0/1", (1,)), "1", "ts")
    assert json.loads(data)["after"]["doc"] == {"a": [1.5, None, {"b": -2e300}]}
