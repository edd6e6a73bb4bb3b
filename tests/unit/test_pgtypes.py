"""Text-form converters and DDL type names for PostgreSQL types."""

from __future__ import annotations

import base64
import logging

import pytest

from agent.errors import DecodeError
from connectors.postgres.pgtypes import (
    TypeConverters,
    TypeInfo,
    UnknownTypeWarnings,
    format_type,
    parse_array,
)

OIDS = {
    "bool": 16, "bytea": 17, "int8": 20, "int2": 21, "int4": 23, "text": 25, "json": 114,
    "float4": 700, "float8": 701, "money": 790, "inet": 869, "bpchar": 1042, "varchar": 1043,
    "date": 1082, "time": 1083, "timestamp": 1114, "timestamptz": 1184, "interval": 1186,
    "timetz": 1266, "numeric": 1700, "uuid": 2950, "jsonb": 3802, "int4[]": 1007,
    "text[]": 1009, "jsonb[]": 3807, "numeric[]": 1231, "float8[]": 1022,
}  # fmt: skip


def convert(type_name: str, text: bytes) -> object:
    return TypeConverters().for_oid(OIDS[type_name])(text)


@pytest.mark.parametrize(
    ("type_name", "text", "expected"),
    [
        ("int8", b"-9223372036854775808", -9223372036854775808),
        ("int2", b"32767", 32767),
        ("numeric", b"12345678901234567890.12345678901234567890", "12345678901234567890.12345678901234567890"),
        ("numeric", b"NaN", "NaN"),
        ("numeric", b"-Infinity", "-Infinity"),
        ("float8", b"1.5", 1.5),
        ("float8", b"NaN", "NaN"),
        ("float8", b"Infinity", "Infinity"),
        ("float4", b"-Infinity", "-Infinity"),
        ("float8", b"1.7976931348623157e+308", 1.7976931348623157e308),
        ("bool", b"t", True),
        ("bool", b"f", False),
        ("text", "naïve ☃".encode(), "naïve ☃"),
        ("bpchar", b"ab  ", "ab  "),
        ("bytea", b"\\x00ff10", base64.b64encode(b"\x00\xff\x10").decode()),
        ("bytea", b"a\\\\b\\000\\377", base64.b64encode(b"a\\b\x00\xff").decode()),
        ("date", b"2024-02-29", "2024-02-29"),
        ("date", b"0044-03-15 BC", "-0043-03-15"),
        ("date", b"0001-01-01 BC", "0000-01-01"),
        ("date", b"infinity", "infinity"),
        ("time", b"23:59:59.999999", "23:59:59.999999"),
        ("timetz", b"12:00:00+05", "12:00:00+05:00"),
        ("timetz", b"12:00:00.5-03:30", "12:00:00.5-03:30"),
        ("timestamp", b"2024-02-29 12:34:56.789", "2024-02-29T12:34:56.789"),
        ("timestamp", b"-infinity", "-infinity"),
        ("timestamptz", b"2024-02-29 12:34:56.000001+00", "2024-02-29T12:34:56.000001+00:00"),
        ("timestamptz", b"2024-02-29 12:34:56+05:30", "2024-02-29T12:34:56+05:30"),
        ("timestamptz", b"2024-02-29 12:34:56-08", "2024-02-29T12:34:56-08:00"),
        ("timestamptz", b"1900-01-01 00:00:00+00:09:21", "1900-01-01T00:00:00+00:09:21"),
        ("timestamptz", b"0100-01-01 00:00:00+00 BC", "-0099-01-01T00:00:00+00:00"),
        ("timestamptz", b"infinity", "infinity"),
        ("interval", b"P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),
        ("interval", b"1 year 2 mons -3 days +04:05:06.500", "P1Y2M-3DT4H5M6.5S"),
        ("interval", b"-00:00:01", "PT-1S"),
        ("interval", b"00:00:00", "PT0S"),
        ("interval", b"@ 1 year ago", "@ 1 year ago"),  # other styles pass through
        ("uuid", b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("json", b' {"a": [1, null, "\\u00e9"]} ', {"a": [1, None, "é"]}),
        ("jsonb", b'{"k": {"n": 1.5}}', {"k": {"n": 1.5}}),
        ("jsonb", b"null", None),
        ("inet", b"192.168.0.1/24", "192.168.0.1/24"),
        ("money", b"$1,234.56", "$1,234.56"),
    ],
)  # fmt: skip
def test_scalar_values(type_name: str, text: bytes, expected: object) -> None:
    assert convert(type_name, text) == expected


def test_negative_zero_float_keeps_its_sign() -> None:
    value = convert("float8", b"-0")
    assert value == 0.0 and str(value) == "-0.0"


@pytest.mark.parametrize(
    ("type_name", "text", "expected"),
    [
        ("int4[]", b"{}", []),
        ("int4[]", b"{1,NULL,3}", [1, None, 3]),
        ("int4[]", b"{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        ("int4[]", b"[0:1]={5,6}", [5, 6]),
        ("int4[]", b"{{{1},{2}}}", [[[1], [2]]]),
        ("int4[]", b"{{{{{{1}}}}}}", [[[[[[1]]]]]]),
        ("text[]", b'{a,"b c",NULL,"NULL","d\\"e","f\\\\g","x,y","{}"}',
         ["a", "b c", None, "NULL", 'd"e', "f\\g", "x,y", "{}"]),
        ("text[]", b'{{"a b",NULL},{c,""}}', [["a b", None], ["c", ""]]),
        ("numeric[]", b"{1.5,NaN,-Infinity}", ["1.5", "NaN", "-Infinity"]),
        ("float8[]", b"{Infinity,2}", ["Infinity", 2.0]),
        ("jsonb[]", b'{"{\\"a\\": 1}",NULL}', [{"a": 1}, None]),
    ],
)  # fmt: skip
def test_arrays(type_name: str, text: bytes, expected: object) -> None:
    assert convert(type_name, text) == expected


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b"{1,2", b'{"a}', b"{1}x", b"{{1},2", b"[0:1]", b"{1,,}x", b'{"a\\'],
)
def test_malformed_arrays(text: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_array(text, bytes.decode)


@pytest.mark.parametrize(
    ("type_name", "text"), [("bytea", b"\\xzz"), ("bytea", b"\\1"), ("json", b"{bad")]
)
def test_malformed_scalars(type_name: str, text: bytes) -> None:
    with pytest.raises(DecodeError):
        convert(type_name, text)


CATALOG = {
    5000: TypeInfo(5000, "mood", "e"),
    5001: TypeInfo(5001, "mood[]", "b", elem_oid=5000),
    5002: TypeInfo(5002, "posint", "d", base_oid=23),
    5003: TypeInfo(5003, "money_amount", "d", base_oid=1700),
    5004: TypeInfo(5004, "posint[]", "b", elem_oid=5002),
    5005: TypeInfo(5005, "deep", "d", base_oid=5002),  # domain over a domain
    5006: TypeInfo(5006, "int4range", "r"),
    5007: TypeInfo(5007, "loop", "d", base_oid=5007),
}


def test_enums_domains_and_their_arrays(caplog: pytest.LogCaptureFixture) -> None:
    converters = TypeConverters(CATALOG.get)
    assert converters.for_oid(5000)(b"happy") == "happy"
    assert converters.for_oid(5001)(b"{sad,happy}") == ["sad", "happy"]
    assert converters.for_oid(5002)(b"7") == 7
    assert converters.for_oid(5003)(b"1.50") == "1.50"
    assert converters.for_oid(5004)(b"{1,NULL}") == [1, None]
    assert converters.for_oid(5005)(b"8") == 8
    assert not caplog.records


def test_unknown_types_pass_text_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    warnings = UnknownTypeWarnings()
    converters = TypeConverters(CATALOG.get, warnings)
    with caplog.at_level(logging.WARNING):
        assert converters.for_oid(5006)(b"[1,5)") == "[1,5)"
        assert converters.for_oid(5006)(b"empty") == "empty"
        TypeConverters(CATALOG.get, warnings).for_oid(5006)
        assert converters.for_oid(9999)(b"x") == "x"  # resolver knows nothing
        assert converters.for_oid(5007)(b"x") == "x"  # a cycle ends, as text
    messages = [r.getMessage() for r in caplog.records]
    assert sum("int4range" in m for m in messages) == 1
    assert sum("oid 9999" in m for m in messages) == 1
    assert warnings.seen >= {"int4range", "oid 9999"}


def test_type_message_names_a_domains_base_type() -> None:
    converters = TypeConverters()  # no resolver
    converters.note_type(6000, "", "int4")  # how pgoutput describes a domain over int4
    assert converters.for_oid(6000)(b"42") == 42
    converters.note_type(6001, "public", "mood")
    assert converters.for_oid(6001)(b"ok") == "ok"
    assert converters.warnings.seen == {"public.mood"}


@pytest.mark.parametrize(
    ("oid", "typmod", "expected"),
    [
        (20, -1, "bigint"),
        (1700, -1, "numeric"),
        (1700, (12 << 16 | 2) + 4, "numeric(12,2)"),
        (1700, (5 << 16 | (-2 & 0x7FF)) + 4, "numeric(5,-2)"),
        (1043, 44, "character varying(40)"),
        (1043, -1, "character varying"),
        (1042, 14, "character(10)"),
        (1042, -1, "bpchar"),
        (1560, 8, "bit(8)"),
        (1562, -1, "bit varying"),
        (1184, -1, "timestamp with time zone"),
        (1184, 3, "timestamp(3) with time zone"),
        (1114, 0, "timestamp(0) without time zone"),
        (1083, -1, "time without time zone"),
        (1266, 6, "time(6) with time zone"),
        (1186, -1, "interval"),
        (1186, (0x7FFF << 16) | 3, "interval(3)"),
        (1186, (6 << 16) | 0xFFFF, "interval year to month"),
        (1186, (((1 << 3) | (1 << 10) | (1 << 11) | (1 << 12)) << 16) | 2, "interval day to second(2)"),
        (1007, -1, "integer[]"),
        (1015, 44, "character varying(40)[]"),
        (1231, (10 << 16 | 0) + 4, "numeric(10,0)[]"),
        (18, -1, '"char"'),
        (3802, -1, "jsonb"),
        (5000, -1, "mood"),
        (5001, -1, "mood[]"),
    ],
)  # fmt: skip
def test_format_type(oid: int, typmod: int, expected: str) -> None:
    assert format_type(oid, typmod, CATALOG.get) == expected


def test_format_type_without_catalog_entry_is_text() -> None:
    warnings = UnknownTypeWarnings()
    assert format_type(7777, -1, CATALOG.get, warnings) == "text"
    assert warnings.seen == {"oid 7777"}


def test_bool_accepts_output_and_cast_spellings() -> None:
    # pgoutput/COPY send t/f; the snapshot reader's col::text gives true/false.
    from connectors.postgres.pgtypes import TypeConverters

    convert = TypeConverters().for_oid(16)
    assert [convert(v) for v in (b"t", b"true", b"f", b"false")] == [True, True, False, False]
