"""Compact JSON through orjson where it is exact, the standard library where not.

Used on per-row paths (envelopes, restore's fold and keys): orjson costs a
fraction of `json`. Its two inexactnesses are routed around, never accepted:
it refuses to write integers beyond 64 bits (and non-string dict keys), and
it *reads* integers beyond 64 bits as floats, silently. Both sides of any
comparison must use the same function here: a float's spelling differs
(orjson writes 1e-7 where json writes 1e-07). `dumps` writes NaN and the
infinities as null, like orjson: what may hold one must refuse it first
(agent.envelope does, for everything that becomes an event).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# Integers of up to 18 digits always fit 64 bits; a run of 19 or more digits
# anywhere (also inside a string: harmless) takes the exact path. Found by
# mapping digits to "0" and all else to " " (bytes.translate, C speed: a
# regex scan cost 4 us per envelope, more than orjson's whole parse).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (no ASCII escaping)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value).encode("utf-8")


def dumps_text(value: Any) -> str:
    return dumps(value).decode("utf-8")


def loads(data: bytes) -> Any:
    """Parse JSON; integers of any size stay exact integers."""
    if _LONG_RUN not in data.translate(_DIGITS_AS_ZERO):
        return orjson.loads(data)
    return json.loads(data)
