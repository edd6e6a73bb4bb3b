"""The compiled row decoders (rowdecoder.py) give exactly the general path's events.

EventBuilder.payload_events decodes rows with a per-relation compiled decoder
and falls back to decode_message + decode_row for anything else; the general
path is the reference, so every comparison here is payload path vs message path,
on recorded bytes, on mutated bytes and on random column values.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DecodeError
from connectors.postgres.pgoutput import (
    Begin,
    Commit,
    PgoutputDecoder,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    decode_message,
)
from connectors.postgres.pgtypes import TypeConverters
from connectors.postgres.relations import EventBuilder, RelationHistory
from connectors.postgres.rowdecoder import compile_row_decoder

DATA = Path(__file__).parent / "data" / "pgoutput"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _builder() -> EventBuilder:
    return EventBuilder(
        RelationHistory(
            TypeConverters(), primary_key=lambda rel: ("id",) if rel.name == "t_full" else None
        )
    )


def _outcome(events: Callable[[], Iterable[Any]]) -> tuple[Any, ...]:
    """The events produced, then the error that stopped them (type and message)."""
    out: list[Any] = []
    try:
        for event in events():
            out.append(event)
            # `before is key` for DEFAULT-identity deletes: keep object identity too.
            out.append(event.before is event.key)
    except DecodeError as exc:
        return (*out, "DecodeError", str(exc))
    return tuple(out)


def _same_events(
    payloads: list[bytes], in_stream: bool, fast: EventBuilder, ref: EventBuilder
) -> None:
    expected = _outcome(
        lambda: ref.transaction_events(decode_message(p, in_stream=in_stream) for p in payloads)
    )
    assert _outcome(lambda: fast.payload_events(payloads, in_stream)) == expected


def _transactions(name: str) -> list[tuple[bool, list[bytes]]]:
    """The recording cut into what the assembler replays: (in_stream, payloads)."""
    decoder = PgoutputDecoder(2)
    out: list[tuple[bool, list[bytes]]] = []
    current: list[bytes] | None = None
    streams: dict[int, list[bytes]] = {}
    stream_xid: int | None = None
    with (DATA / name).open() as fh:
        for line in fh:
            payload = bytes.fromhex(json.loads(line)["data"])
            msg = decoder.decode(payload)
            if isinstance(msg, Begin):
                current = []
            elif isinstance(msg, Commit):
                assert current is not None
                out.append((False, current))
                current = None
            elif isinstance(msg, StreamStart):
                stream_xid = msg.xid
                streams.setdefault(msg.xid, [])
            elif isinstance(msg, StreamStop):
                stream_xid = None
            elif isinstance(msg, StreamCommit):
                out.append((True, streams.pop(msg.xid)))
            elif isinstance(msg, StreamAbort):
                if msg.subxid == msg.xid:
                    streams.pop(msg.xid, None)
                else:
                    streams[msg.xid] = [
                        p
                        for p in streams[msg.xid]
                        if struct.unpack_from(">I", p, 1)[0] != msg.subxid
                    ]
            elif stream_xid is not None:
                streams[stream_xid].append(payload)
            elif current is not None:
                current.append(payload)
    return out


def test_recorded_transactions_decode_alike() -> None:
    for name in ("proto1.jsonl", "proto1_binary.jsonl", "proto2_stream.jsonl"):
        fast, ref = _builder(), _builder()
        transactions = _transactions(name)
        assert transactions, name
        for in_stream, payloads in transactions:
            _same_events(payloads, in_stream, fast, ref)


def _samples() -> tuple[list[bytes], list[bytes]]:
    relations: list[bytes] = []
    rows: list[bytes] = []
    with (DATA / "proto1.jsonl").open() as fh:
        for line in fh:
            raw = bytes.fromhex(json.loads(line)["data"])
            if raw[0] == ord("R"):
                relations.append(raw)
            elif raw[0] in b"IUD":
                rows.append(raw)
    return relations, sorted(rows, key=len)[:200]


RELATIONS, ROWS = _samples()


@st.composite
def mutated_row(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(ROWS)))
    for _ in range(draw(st.integers(0, 3))):
        if not raw:
            break
        pos = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if action == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            raw[pos] = draw(st.sampled_from([0, 0xFF, ord("t"), ord("u"), ord("n"), ord("b")]))
        elif action == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 6))]
        else:
            del raw[pos:]
    return bytes(raw)


@FUZZ
@given(st.lists(mutated_row(), min_size=1, max_size=3))
def test_mutated_rows_decode_alike(rows: list[bytes]) -> None:
    fast, ref = _builder(), _builder()
    _same_events([*RELATIONS, *rows], False, fast, ref)


# One column of each type with an inline form, and one without (float8).
_TYPES = {"i8": 20, "i4": 23, "txt": 25, "num": 1700, "b": 16, "d": 1082, "tz": 1184, "j": 3802}
_TYPES |= {"js": 114, "f": 701}
_VALUES: dict[str, list[bytes]] = {
    "i8": [b"0", b"-9223372036854775808", b"12", b" 7", b"1_0", b"x", b""],
    "i4": [b"42", b"-1"],
    "txt": ["ü €".encode(), b"", b"\xff\xfe", b"plain"],
    "num": [b"12.50", b"NaN", b"-Infinity"],
    "b": [b"t", b"f", b"true", b"", b"tt"],
    "d": [b"2024-02-29", b"0044-03-15 BC", b"infinity", b"10000-01-01", b"", b"C", b"x BC"],
    "tz": [
        b"2024-02-29 12:34:56.789+00",
        b"2024-02-29 12:34:56+05:30",
        b"0044-03-15 10:00:00+00 BC",
        b"-infinity",
        b"infinity",
        b"12345-01-01 00:00:00+00",
        b"",
        b"+0",
        b"abcdefghij +00",
    ],
    "j": [b'{"a": [1, 2.5, null]}', b'"s"', b"1", b"", b" 1", b"{", b"1 2", b"[1] ", b"nul"],
    "js": [b' {"a":1} ', b"[]", b"\t2\n"],
    "f": [b"1.5", b"NaN", b"-Infinity", b"1e308"],
}


def _relation(relid: int, key: str) -> bytes:
    out = bytearray(b"R" + struct.pack(">I", relid) + b"public\0t_types\0d")
    out += struct.pack(">h", len(_TYPES))
    for name, oid in _TYPES.items():
        out += bytes([name == key]) + name.encode() + b"\0" + struct.pack(">Ii", oid, -1)
    return bytes(out)


def _tuple(values: list[bytes | None]) -> bytes:
    out = bytearray(struct.pack(">h", len(values)))
    for value in values:
        out += b"n" if value is None else b"t" + struct.pack(">I", len(value)) + value
    return bytes(out)


column_values = st.fixed_dictionaries(
    {
        name: st.one_of(st.none(), st.sampled_from(samples), st.binary(max_size=12))
        for name, samples in _VALUES.items()
    }
)


@FUZZ
@given(column_values, column_values, st.sampled_from(list(_TYPES)))
def test_inline_conversions_match_the_converters(
    new: dict[str, bytes | None], old: dict[str, bytes | None], key: str
) -> None:
    relid = 77
    head = struct.pack(">I", relid)
    row, old_row = _tuple(list(new.values())), _tuple(list(old.values()))
    payloads = [
        _relation(relid, key),
        b"I" + head + b"N" + row,
        b"U" + head + b"N" + row,
        b"U" + head + b"O" + old_row + b"N" + row,
        b"U" + head + b"K" + old_row + b"N" + row,
        b"D" + head + b"K" + old_row,
        b"D" + head + b"O" + old_row,
    ]
    fast, ref = _builder(), _builder()
    for payload in payloads:  # one message per transaction: a failure stops only its own
        _same_events([payload], False, fast, ref)


def test_no_compiled_decoder_for_a_key_outside_the_columns() -> None:
    converters = TypeConverters().row((23, 25))
    assert compile_row_decoder(("id", "name"), converters, ("other",)) is None
    assert compile_row_decoder(("id", "name"), converters, ("id",)) is not None


def test_column_names_are_data_not_code() -> None:
    rel = Relation(
        None, 5, "public", "odd",
        "d", (RelationColumn('x"}, __import__("os")#', 25, -1, True), RelationColumn("\\n", 23, -1, False)),
    )  # fmt: skip
    history = RelationHistory(TypeConverters())
    history.apply(rel)
    decoder = history.current(5).row_decoder
    assert decoder is not None
    row, key, _end = decoder(_tuple([b"v", b"3"]), 0)
    assert row == {'x"}, __import__("os")#': "v", "\\n": 3}
    assert key == {'x"}, __import__("os")#': "v"}
