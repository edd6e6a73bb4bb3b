"""Fuzzing: recorded MariaDB binlog events, random and mutated, through the real reader.

The events in data/binlog/mariadb_events.jsonl were recorded from a private
MariaDB (data/binlog/record.py). They are replayed through BinlogReader's own
dispatch loop (table maps, row decoders, GTID/XID/QUERY/ROTATE handling, DDL
tracking) via a stand-in for the replication connection that hands out the
recorded packets. Whatever the bytes, the reader yields transactions or raises
one of the project's errors, and finishes (a hypothesis deadline per example).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ChangevaultError, DecodeError
from agent.events import Position, Transaction
from connectors.mysql import binlog_events as ev
from connectors.mysql.binlog_reader import (
    MALFORMED_EVENT_ERRORS,
    BinlogReader,
    ReaderConfig,
    SourceCounters,
)
from connectors.mysql.row_decoder import RowDecoder, parse_rows_header
from connectors.mysql.schema_history import SchemaHistory, parse_ddl
from connectors.mysql.table_map import parse_table_map

DATA = Path(__file__).parent / "data" / "binlog" / "mariadb_events.jsonl"
EVENTS: list[bytes] = [bytes.fromhex(json.loads(line)["data"]) for line in DATA.open()]
FUZZ = settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
CHARSETS = {33: "utf8mb3", 45: "utf8mb4", 46: "utf8mb4", 8: "latin1", 63: "binary", 224: "utf8mb4"}
EOF_PACKET = b"\xfe\x00\x00\x00\x00"


class _Packet:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def get_all_data(self) -> bytes:
        return self._data


class _NoChecksumCursor:
    """Answers the reader's one control query: the recording has checksums stripped."""

    def __enter__(self) -> _NoChecksumCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, query: str) -> None:
        assert "binlog_checksum" in query

    def fetchone(self) -> tuple[str]:
        return ("NONE",)


class _ReplayStream:
    """The two attributes of BinLogStreamReader the reader uses, over recorded events."""

    def __init__(self, events: list[bytes]) -> None:
        self._packets = iter([b"\x00" + e for e in events] + [EOF_PACKET])
        self._stream_connection = self
        self._ctl_connection = self

    def _read_packet(self) -> _Packet:
        return _Packet(next(self._packets, EOF_PACKET))

    def cursor(self) -> _NoChecksumCursor:
        return _NoChecksumCursor()


def replay(events: list[bytes], tmp: Path) -> list[tuple[Any, ...]]:
    """(op, table, key, after) of every change the reader yields for `events`."""
    config = ReaderConfig(conn_kwargs={}, server_id=99, mariadb=True,
                          captured=lambda db, table: db == "rec", charsets=CHARSETS)
    reader = BinlogReader(config, SchemaHistory(tmp), SourceCounters())
    start = Position(text="0-1-0", sort_key=(0, 4), extra=(("gtid", "0-1-0"),))
    items: Iterator[Any] = reader._events(_ReplayStream(events), start,
                                          "mariadb-bin.000001", None)
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, Transaction):
            out.extend((e.op, e.table, e.key, e.after) for e in item.events)
    return out


def test_the_recording_replays_to_the_workload(tmp_path: Path) -> None:
    changes = replay(EVENTS, tmp_path)
    ops = [(op, table, key) for op, table, key, _after in changes]
    assert ops == [
        ("c", 'order"s', {"select": 1}), ("c", 'order"s', {"select": 2}),
        ("u", 'order"s', {"select": 1}), ("d", 'order"s', {"select": 2}),
        ("t", 'order"s', None), ("c", "latin", {"id": 1}), ("c", "latin", {"id": 2}),
    ]
    first = changes[0][3]
    assert first["a.b"] == "ä'\"`" and first["Kunden Übersicht"] == "Straße 🙂"
    assert first["d"] == "-123456789.125" and first["bi"] == 18446744073709551615
    assert changes[5][3]["v"] == "café"


def _safe_replay(events: list[bytes], tmp: Path) -> None:
    # DecodeError / UncapturableChange: a one-line error, exit 4 / 3.
    with contextlib.suppress(ChangevaultError):
        replay(events, tmp)


@st.composite
def mutated_event(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and raw:
            raw[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF]))
        elif action == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 8))]
        else:
            del raw[pos:]
    return bytes(raw)


# Mutate one event of the real sequence; the events around it stay intact, so
# the corrupt one is reached with the reader in a realistic state.
@FUZZ
@given(st.data())
def test_one_mutated_event_in_the_real_sequence(tmp_path_factory: pytest.TempPathFactory,
                                                data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(EVENTS) - 1))
    events = list(EVENTS)
    events[index] = data.draw(mutated_event([EVENTS[index]]))
    _safe_replay(events, tmp_path_factory.mktemp("h"))


@FUZZ
@given(st.data())
def test_random_bytes_in_the_real_sequence(tmp_path_factory: pytest.TempPathFactory,
                                           data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(EVENTS)))
    header = data.draw(st.sampled_from(EVENTS))[:19]  # a real header type, random body
    junk = data.draw(st.binary(max_size=120))
    events = list(EVENTS)
    events.insert(index, data.draw(st.sampled_from([junk, header + junk])))
    _safe_replay(events, tmp_path_factory.mktemp("h"))


TABLE_MAPS = [e[19:] for e in EVENTS if e[4] == ev.TABLE_MAP]
ROW_EVENTS = [e for e in EVENTS if e[4] in ev.ROW_EVENTS]


# The table map and row decoder directly, with MySQL's (not MariaDB's) flavour too.
@FUZZ
@given(mutated_event(TABLE_MAPS), st.booleans(), st.sampled_from(ROW_EVENTS))
def test_mutated_table_maps_decode_rows_or_raise(body: bytes, mariadb: bool, row_event: bytes) -> None:
    try:
        table_map = parse_table_map(body, mariadb)
        decoder = RowDecoder(table_map, lambda c: "utf-8" if c else None, frozenset())
        rows_body = row_event[19:]
        is_update = row_event[4] == ev.UPDATE_ROWS_V1
        _n, present, present2, pos = parse_rows_header(rows_body, False, is_update)
        list(decoder.rows(rows_body, pos, len(rows_body), present, present2))
    except (ChangevaultError, *MALFORMED_EVENT_ERRORS):
        # Direct calls skip the reader's DecodeError wrapping of exactly these.
        return


def test_a_time_precision_beyond_6_in_a_table_map_is_a_decode_error() -> None:
    # Found by the fuzz test above: a mutated TIME2 metadata byte of 10 made the
    # fraction's scale a float (10 ** -4) and decoding a row failed with a TypeError;
    # such a table map is now refused when the decoder is built.
    body = b'\x12\x00\x00\x00\x00\x00\x01\x00\x03rec\x00\x07order"s\x00\x15\x03\x0f\xfc\xf6\x04\x05\x12\x11\n\x13\r\xfe\xfe\x08\x01\t\x10\xfc\xfe\xfe\xfc\x16\xa0\x00\x02\x0c\x03\x04\x08\x06\x03\n\xf7\x01\xf8\x01\x02\x01\x02\xfe\x04\xfe\x0c\x04\xfe\xff\x1f\x01\x01\x0c\x03\x06--??-.\x04L\x06select\x03a.b\x11Kunden \xc3\x9cbersicht\x01d\x01f\x01g\x02dt\x02ts\x02dd\x02tm\x01y\x01e\x01s\x02bi\x02ti\x02mi\x02bt\x02bl\x02bn\x02ch\x01j\n\x01-\x05\x07\x03\x01x\x01y\x01z\x06\x07\x03\x01a\x01b\x01c\x08\x01\x00'
    table_map = parse_table_map(body, False)
    with pytest.raises(DecodeError, match="fractional-second precision of 0..6 for tm, found 10"):
        RowDecoder(table_map, lambda c: "utf-8" if c else None, frozenset())


@settings(max_examples=200, deadline=1000)
@given(st.text(max_size=80))
def test_ddl_recognition_never_raises(text: str) -> None:
    for sql in (text, "TRUNCATE TABLE " + text, "ALTER TABLE `x` " + text, "RENAME TABLE " + text):
        parse_ddl(sql, "db")
