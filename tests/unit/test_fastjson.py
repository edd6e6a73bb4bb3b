"""agent.fastjson: orjson's speed without its inexact corners."""

from __future__ import annotations

import json

import pytest

from agent import fastjson
from agent.restore.checksum import TableChecksum

BIG = 2**70 + 1  # beyond 64 bits: orjson alone reads it as a float


@pytest.mark.parametrize("doc", [
    b'{"a": 123456789012345678901234567890}',
    b'[18446744073709551615, -9223372036854775808, 1234567890123456789]',
    b'{"s": "digits 12345678901234567890 in a string", "n": 1}',
    b'[1.5, 1e-07, 0.1, 12345678901234567]',
    b'{"emoji": "\xf0\x9f\x98\x80", "nested": {"x": [null, true, false]}}',
])
def test_loads_equals_the_stdlib_with_exact_integers(doc: bytes) -> None:
    got = fastjson.loads(doc)
    assert got == json.loads(doc)
    assert repr(got) == repr(json.loads(doc))  # types too: an int stays an int


def test_orjson_alone_would_lose_the_big_integer() -> None:
    import orjson

    assert isinstance(orjson.loads(str(BIG).encode()), float)  # why the guard exists
    assert fastjson.loads(str(BIG).encode()) == BIG


def test_dumps_is_compact_utf8_and_exact_for_big_integers() -> None:
    assert fastjson.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert fastjson.loads(fastjson.dumps([BIG])) == [BIG]
    assert fastjson.dumps_text([BIG, 1.0]) == f"[{BIG},1.0]"


def test_checksum_tells_types_apart_and_ignores_row_order() -> None:
    def of(*rows: list[object]) -> TableChecksum:
        out = TableChecksum()
        for r in rows:
            out.add(r)
        return out

    assert of([1, "a"], [2, "b"]) == of([2, "b"], (1, "a"))
    for other in ([1.0, "a"], [True, "a"], ["1", "a"], [1, "a", None]):
        assert of([1, "a"]) != of(other)
    assert of([1, {"k": 1}]) != of([1, {"k": 1.0}])
    assert of([BIG]) != of([BIG + 1])
    assert of([1], [1]) != of([1])


def test_loads_exact_keeps_every_number_as_written_and_dumps_writes_it_back() -> None:
    text = '{"a":[1.50,1e400,-0.0,1E+2,12345678901234567890.123456789],"n":10,"big":123456789012345678901234}'
    value = fastjson.loads_exact(text)
    assert value["a"][0] == 1.5  # compares as the float it parses to
    assert fastjson.dumps(value) == text.encode()
    assert not fastjson.holds_float(value)  # JsonNumbers are not plain floats
    assert fastjson.holds_float(fastjson.loads(text.encode()))  # orjson's parse lost them


def test_dumps_raw_writes_bytes_verbatim_and_dumps_refuses_them() -> None:
    assert fastjson.dumps_raw([1, b'{"x":1.50}', None]) == b'[1,{"x":1.50},null]'
    with pytest.raises(TypeError):
        fastjson.dumps([b"{}"])


def test_raw_turns_a_json_column_value_into_its_text_and_arrays_element_wise() -> None:
    assert fastjson.raw(None) is None
    assert fastjson.raw(fastjson.loads_exact('{"p": 19.90}')) == b'{"p":19.90}'
    assert fastjson.raw([{"a": 1}, None, [[1], [2]]], array=True) == [b'{"a":1}', None, [[b"1"], [b"2"]]]
    assert fastjson.raw([1, 2]) == b"[1,2]"
