"""Compact JSON through orjson where it is exact, the standard library where not.

Used on per-row paths (envelopes, restore's fold and keys): orjson costs a
fraction of `json`. Its two inexactnesses are routed around, never accepted:
it refuses to write integers beyond 64 bits (and non-string dict keys), and
it *reads* integers beyond 64 bits as floats, silently. Both sides of any
comparison must use the same function here: a float's spelling differs
(orjson writes 1e-7 where json writes 1e-07). `dumps` writes NaN and the
infinities as null, like orjson: what may hold one must refuse it first
(agent.envelope does, for everything that becomes an event).

Numbers inside json/jsonb values are exact: the capture path parses them with
`loads_exact`, which keeps each non-integer number's text in a JsonNumber (a
float that `dumps` writes back verbatim), so `1.50` stays `1.50` and a number
beyond the double range stays as written. Restore keeps such values as raw
JSON text (bytes), which `dumps_raw` writes verbatim.
"""

from __future__ import annotations

import json
import json.scanner
from typing import Any, Final

import orjson

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# Integers of up to 18 digits always fit 64 bits; a run of 19 or more digits
# anywhere (also inside a string: harmless) takes the exact path. Found by
# mapping digits to "0" and all else to " " (bytes.translate, C speed: a
# regex scan cost 4 us per envelope, more than orjson's whole parse).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


class JsonNumber(float):
    """A non-integer JSON number with its text: compares as the float it parses
    to, is written back as the text (1.50, 1e400) by dumps."""

    __slots__ = ("text",)
    text: str


def _number(text: str) -> JsonNumber:
    n = JsonNumber(text)
    n.text = text
    return n


_EXACT: Final = json.JSONDecoder(parse_float=_number)
# The C scanner itself (see connectors.postgres.pgtypes): ints stay exact ints,
# non-integer numbers become JsonNumbers.
EXACT_SCAN: Final = json.scanner.make_scanner(_EXACT)  # type: ignore[arg-type]
_64_BITS = range(-(1 << 63), 1 << 64)


def _default(obj: Any) -> Any:
    if obj.__class__ is JsonNumber:
        return orjson.Fragment(obj.text)
    raise TypeError


def _default_raw(obj: Any) -> Any:
    if obj.__class__ is bytes:
        return orjson.Fragment(obj)
    return _default(obj)


def _wide_ints_as_text(value: Any) -> Any:
    """The value with integers beyond 64 bits as verbatim text (orjson refuses them)."""
    cls = value.__class__
    if cls is int and value not in _64_BITS:
        return orjson.Fragment(str(value))
    if cls is dict:
        return {k: _wide_ints_as_text(v) for k, v in value.items()}
    if cls is list:
        return [_wide_ints_as_text(v) for v in value]
    return value


def _dumps(value: Any, default: Any) -> bytes:
    try:
        return orjson.dumps(value, default=default)
    except orjson.JSONEncodeError:
        pass
    try:
        return orjson.dumps(_wide_ints_as_text(value), default=default)
    except orjson.JSONEncodeError:
        # Non-string dict keys (the stdlib converts them); anything else raises.
        return _ENCODER.encode(value).encode("utf-8")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (no ASCII escaping); JsonNumbers as their text."""
    return _dumps(value, _default)


def dumps_text(value: Any) -> str:
    return dumps(value).decode("utf-8")


def dumps_raw(value: Any) -> bytes:
    """dumps, and `bytes` values are JSON text written verbatim (restore's json columns)."""
    return _dumps(value, _default_raw)


def loads(data: bytes) -> Any:
    """Parse JSON; integers of any size stay exact integers (other numbers are floats)."""
    if _LONG_RUN not in data.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # orjson refuses numbers beyond the double range (1e400): valid JSON
    return json.loads(data)


def loads_exact(data: bytes | str) -> Any:
    """Parse JSON with every number exact: ints as ints, others as JsonNumbers."""
    return _EXACT.decode(data.decode("utf-8") if isinstance(data, bytes) else data)


def holds_float(value: Any) -> bool:
    """Whether a value parsed by `loads` holds a non-integer number (a float, its
    text lost) anywhere: then `loads_exact` of the same text is needed."""
    cls = value.__class__
    if cls is float:
        return True
    if cls is dict:
        return any(holds_float(v) for v in value.values())
    if cls is list:
        return any(holds_float(v) for v in value)
    return False


def json_column(type_name: str) -> bool | None:
    """For a json/jsonb column type (or an array of one), whether it is an array;
    None for any other type. Restore keeps these columns' values `raw`."""
    t = type_name.lower()
    if t.removesuffix("[]").strip() not in ("json", "jsonb"):
        return None
    return t.endswith("[]")


def raw(value: Any, array: bool = False) -> Any:
    """A json column's value as its exact JSON text (bytes; None stays None); with
    `array`, a json[] column's: each element, nested lists being dimensions."""
    if value is None:
        return None
    if array and value.__class__ is list:
        return [raw(v, True) for v in value]
    return dumps(value)
