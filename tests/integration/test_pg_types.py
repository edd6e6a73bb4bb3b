"""Every mapped PostgreSQL type, boundary values, through a real server's pgoutput.

Rows are written with SQL literals, decoded from pg_logical_slot_*_binary_changes
(the walsender's exact bytes) by our decoder and converters, and compared with
the JSON values CONTRACT.md promises.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from agent.envelope import EnvelopeEncoder
from agent.events import ChangeEvent, Position, TableSchema
from connectors.postgres.pgoutput import PgoutputDecoder
from connectors.postgres.pgtypes import (
    REPLICATION_SESSION_SETTINGS,
    TYPE_INFO_QUERY,
    TypeConverters,
    TypeInfo,
)
from connectors.postgres.relations import EventBuilder, RelationHistory

ALL_BYTES = bytes(range(256))

# column -> (DDL type, [(SQL literal, expected JSON value), ...])
CASES: dict[str, tuple[str, list[tuple[str, Any]]]] = {
    "i2": ("smallint", [("-32768", -32768), ("32767", 32767)]),
    "i4": ("integer", [("-2147483648", -2147483648)]),
    "i8": ("bigint", [("-9223372036854775808", -9223372036854775808),
                      ("9223372036854775807", 9223372036854775807)]),
    "num": ("numeric", [
        ("'1234567890123456789012345678901234567890.0123456789'",
         "1234567890123456789012345678901234567890.0123456789"),
        ("'NaN'", "NaN"), ("'Infinity'", "Infinity"), ("'-Infinity'", "-Infinity"),
        ("'-0.000001'", "-0.000001")]),
    "num_p": ("numeric(12,2)", [("12.5", "12.50")]),
    "f4": ("real", [("'NaN'", "NaN"), ("'Infinity'", "Infinity"), ("1.1", 1.1),
                    ("'-Infinity'", "-Infinity")]),
    "f8": ("double precision", [("'NaN'", "NaN"), ("'-Infinity'", "-Infinity"), ("'-0'", -0.0),
                                ("1.7976931348623157e308", 1.7976931348623157e308),
                                ("5e-324", 5e-324), ("0.1", 0.1)]),
    "b": ("boolean", [("true", True), ("false", False)]),
    "t": ("text", [("E'a''b\\\\c\\nd ☃ 😀'", "a'b\\c\nd ☃ 😀"), ("''", "")]),
    "vc": ("varchar(5)", [("'abc'", "abc")]),
    "bp": ("char(4)", [("'ab'", "ab  ")]),
    "nm": ("name", [("'relname'", "relname")]),
    "ba": ("bytea", [(f"'\\x{ALL_BYTES.hex()}'", base64.b64encode(ALL_BYTES).decode()),
                     ("''", "")]),
    "d": ("date", [("'2024-02-29'", "2024-02-29"), ("'infinity'", "infinity"),
                   ("'-infinity'", "-infinity"), ("'4713-01-01 BC'", "-4712-01-01"),
                   ("'5874897-12-31'", "5874897-12-31")]),
    "tm": ("time", [("'24:00:00'", "24:00:00"), ("'00:00:00.000001'", "00:00:00.000001")]),
    "ttz": ("timetz", [("'12:34:56.789+05:30'", "12:34:56.789+05:30"),
                       ("'00:00:00-12'", "00:00:00-12:00")]),
    "ts": ("timestamp", [("'2024-02-29 12:34:56.123456'", "2024-02-29T12:34:56.123456"),
                         ("'infinity'", "infinity"), ("'-infinity'", "-infinity"),
                         ("'0044-03-15 12:00:00 BC'", "-0043-03-15T12:00:00")]),
    "tstz": ("timestamptz", [
        ("'2024-02-29 12:34:56.123456+00'", "2024-02-29T12:34:56.123456+00:00"),
        ("'2024-02-29 12:34:56.000001+05:30'", "2024-02-29T07:04:56.000001+00:00"),
        ("'infinity'", "infinity"), ("'-infinity'", "-infinity")]),
    "iv": ("interval", [("'1 year 2 months 3 days 04:05:06.5'", "P1Y2M3DT4H5M6.5S"),
                        ("'-1 days +00:00:01'", "P-1DT1S"), ("'0'", "PT0S"),
                        ("'-0.000001 seconds'", "PT-0.000001S"),
                        ("'-3 hours -4 minutes'", "PT-3H-4M")]),
    "u": ("uuid", [("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]),
    "j": ("json", [("'{\"é\": \"😀\", \"n\": [1, 2.5, null, true], \"z\": \"\\u0000\"}'",
                    {"é": "😀", "n": [1, 2.5, None, True], "z": "\x00"})]),
    "jb": ("jsonb", [("'{\"b\": 12345678901234567890, \"a\": \"☃\"}'",
                      {"a": "☃", "b": 12345678901234567890}),
                     ("'[]'", []), ("'\"s\"'", "s")]),
    "ai4": ("integer[]", [("'{1,NULL,3}'", [1, None, 3]), ("'{}'", []),
                          ("'{{1,2},{3,4}}'", [[1, 2], [3, 4]])]),
    "atx": ("text[]", [("ARRAY['a,b', 'c\"d', NULL, 'NULL', '', E'e\\\\f', ' sp ', '{x}']",
                        ["a,b", 'c"d', None, "NULL", "", "e\\f", " sp ", "{x}"]),
                       ("'{{a,NULL},{\"b c\",d}}'", [["a", None], ["b c", "d"]])]),
    "anum": ("numeric[]", [("'{1.5,NaN,-Infinity}'", ["1.5", "NaN", "-Infinity"])]),
    "af8": ("float8[]", [("'{NaN,-0,1e300}'", ["NaN", -0.0, 1e300])]),
    "ab": ("boolean[]", [("'{t,f,NULL}'", [True, False, None])]),
    "aba": ("bytea[]", [("ARRAY['\\x00ff'::bytea, NULL]", ["AP8=", None])]),
    "ats": ("timestamptz[]", [("ARRAY['2024-01-01 00:00:00+00'::timestamptz, 'infinity']",
                               ["2024-01-01T00:00:00+00:00", "infinity"])]),
    "ad": ("date[]", [("'{2024-01-01,infinity}'", ["2024-01-01", "infinity"])]),
    "ajb": ("jsonb[]", [("ARRAY['{\"a\": [1]}'::jsonb, 'null']", [{"a": [1]}, None])]),
    "au": ("uuid[]", [("'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
                       ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])]),
    "aiv": ("interval[]", [("'{1 day,-00:00:01}'", ["P1D", "PT-1S"])]),
    "e": ("mood", [("'happy'", "happy")]),
    "ae": ("mood[]", [("'{sad,NULL,\"so so\"}'", ["sad", None, "so so"])]),
    "dom": ("posint", [("7", 7)]),
    "domt": ("short_text", [("'hi'", "hi")]),
    "adom": ("posint[]", [("'{1,2}'", [1, 2])]),
    "ip": ("inet", [("'192.168.1.1/24'", "192.168.1.1/24"), ("'::1'", "::1")]),
    "cidr": ("cidr", [("'10.0.0.0/8'", "10.0.0.0/8")]),
    "mac": ("macaddr", [("'08:00:2b:01:02:03'", "08:00:2b:01:02:03")]),
    "mac8": ("macaddr8", [("'08:00:2b:01:02:03:04:05'", "08:00:2b:01:02:03:04:05")]),
    "m": ("money", [("1234.56", "$1,234.56"), ("-1.5", "-$1.50")]),
    "vb": ("varbit(8)", [("B'1011'", "1011")]),
}  # fmt: skip

SETUP = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'so so')",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
    "CREATE DOMAIN short_text AS varchar(10)",
    "SET lc_monetary = 'C'",
]


def _session(conn: psycopg.Connection[Any], settings: dict[str, str]) -> None:
    for name, value in settings.items():
        conn.execute(
            sql.SQL("SELECT set_config({}, {}, false)").format(
                sql.Literal(name), sql.Literal(value)
            )
        )


@pytest.fixture
def loaded(pg_database: Any) -> Iterator[tuple[psycopg.Connection[Any], list[tuple[str, Any]]]]:
    """A table holding one row per case, changes waiting in slot `types_slot`."""
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        for statement in SETUP:
            conn.execute(statement)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(
                sql.Identifier(name), sql.SQL(ddl)
            )  # DDL from the constant table
            for name, (ddl, _) in CASES.items()
        )
        conn.execute(sql.SQL("CREATE TABLE vals (id integer PRIMARY KEY, {})").format(columns))
        conn.execute("CREATE PUBLICATION types_pub FOR TABLE vals")
        conn.execute("SELECT pg_create_logical_replication_slot('types_slot', 'pgoutput')")
        expected: list[tuple[str, Any]] = []
        with conn.transaction():
            for name, (_, cases) in CASES.items():
                for literal, value in cases:
                    conn.execute(
                        sql.SQL("INSERT INTO vals (id, {}) VALUES (%s, {})").format(
                            sql.Identifier(name), sql.SQL(literal)
                        ),
                        (len(expected) + 1,),
                    )
                    expected.append((name, value))
        yield conn, expected


def _decode(
    conn: psycopg.Connection[Any], settings: dict[str, str], peek: bool,
    slot: str = "types_slot", publication: str = "types_pub",
) -> tuple[list[ChangeEvent], list[TableSchema]]:
    _session(conn, settings)
    function = (
        "pg_logical_slot_peek_binary_changes" if peek else "pg_logical_slot_get_binary_changes"
    )
    rows = conn.execute(
        sql.SQL("SELECT data FROM {}({}, NULL, NULL, {})").format(
            sql.Identifier(function),
            sql.Literal(slot),
            sql.SQL(", ").join(
                map(sql.Literal, ["proto_version", "1", "publication_names", publication])
            ),
        )
    ).fetchall()
    with psycopg.connect(conn.info.dsn, autocommit=True) as catalog:

        def resolve(oid: int) -> TypeInfo | None:
            row = catalog.execute(TYPE_INFO_QUERY, (oid,)).fetchone()  # type: ignore[arg-type]
            return TypeInfo(*row) if row else None

        decoder = PgoutputDecoder(1)
        builder = EventBuilder(RelationHistory(TypeConverters(resolve)))
        schemas: list[TableSchema] = []
        messages = [decoder.decode(data) for (data,) in rows]
        return list(builder.transaction_events(messages, new_schemas=schemas)), schemas


def _mismatches(events: list[ChangeEvent], expected: list[tuple[str, Any]]) -> list[str]:
    assert len(events) == len(expected)
    problems = []
    for event, (name, value) in zip(events, expected, strict=True):
        assert event.op == "c" and event.after is not None
        got = event.after[name]
        # json.dumps tells -0.0 from 0.0 and 1 from True, which == does not
        if json.dumps(got) != json.dumps(value) or got != got:
            problems.append(f"{name}: expected {value!r}, got {got!r}")
    return problems


def test_every_type_round_trips_exactly(
    loaded: tuple[psycopg.Connection[Any], list[tuple[str, Any]]],
) -> None:
    conn, expected = loaded
    events, _ = _decode(conn, dict(REPLICATION_SESSION_SETTINGS), peek=False)
    assert _mismatches(events, expected) == []
    assert _mismatches(events[:1], [(expected[0][0], -1)]) != []  # the comparison can fail
    assert all(e.after is not None and e.after.keys() == {"id", *CASES} for e in events)
    assert [e.key for e in events[:2]] == [{"id": 1}, {"id": 2}]


def test_schema_type_names_match_format_type(
    loaded: tuple[psycopg.Connection[Any], list[tuple[str, Any]]],
) -> None:
    conn, _ = loaded
    _, schemas = _decode(conn, dict(REPLICATION_SESSION_SETTINGS), peek=True)
    (schema,) = schemas
    server = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'vals'::regclass AND attnum > 0 AND NOT attisdropped"
        ).fetchall()
    )
    assert {c.name: c.type_name for c in schema.columns} == server
    assert schema.primary_key == ("id",)


def test_other_session_styles_give_the_same_values(
    loaded: tuple[psycopg.Connection[Any], list[tuple[str, Any]]],
) -> None:
    """A walsender without our settings (server-wide defaults differ): same JSON,
    timestamptz in another offset but the same instant."""
    conn, expected = loaded
    other = {
        "TimeZone": "Asia/Kolkata",
        "IntervalStyle": "postgres",
        "DateStyle": "ISO, DMY",
        "bytea_output": "escape",
        "extra_float_digits": "1",
    }
    events, _ = _decode(conn, other, peek=True)
    problems = _mismatches(events, expected)
    tstz = [p for p in problems if p.startswith(("tstz:", "ats:"))]
    assert [p for p in problems if p not in tstz] == []
    for event, (name, value) in zip(events, expected, strict=True):
        if name == "tstz" and value[0].isdigit():
            assert event.after is not None and event.after[name].endswith("+05:30")
            assert datetime.fromisoformat(event.after[name]) == datetime.fromisoformat(value)


def test_json_numbers_reach_the_event_as_written(pg_database: Any) -> None:
    # jsonb keeps 1.50 (numeric), a double would not; json keeps its text, and
    # 1e400 is valid JSON that a double cannot hold; 17+ digits would round.
    doc = '{"x": [1e400, 1.50, 12345678901234567890.123456789, -0.0, 7]}'
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE huge (id integer PRIMARY KEY, j json, jb jsonb)")
        conn.execute("CREATE PUBLICATION huge_pub FOR TABLE huge")
        conn.execute("SELECT pg_create_logical_replication_slot('huge_slot', 'pgoutput')")
        conn.execute("INSERT INTO huge VALUES (1, %s, %s)", (doc, doc))
        events, _ = _decode(conn, dict(REPLICATION_SESSION_SETTINGS), peek=False,
                            slot="huge_slot", publication="huge_pub")
    (event,) = events
    _eid, data = EnvelopeEncoder("postgres", "db").encode(event, Position("0/1", (1,)), "1", "ts")
    assert b'"j":{"x":[1e400,1.50,12345678901234567890.123456789,-0.0,7]}' in data
    # jsonb prints numbers as numeric does: 1e400 in full, -0.0 as 0.0
    assert b'"jb":{"x":[1' + b"0" * 400 + b',1.50,12345678901234567890.123456789,0.0,7]}' in data
