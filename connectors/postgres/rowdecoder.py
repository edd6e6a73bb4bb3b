"""Per-relation TupleData decoders compiled to straight-line Python: the hot path.

Decoding a row column by column in a loop pays, per column, for the loop, a
dispatch on the column kind, a converter call and a list append, then a
second pass to build the dict: about 0.5 µs a column, most of a row's cost.
Each relation shape instead gets one generated function that reads its
columns in sequence with the common conversions written inline and builds the
row dict and the key dict in one expression each.

Only fixed templates and numbers (column indices, the column count) are ever
compiled: column names and converters enter as closure variables of a factory,
never as source text, so nothing a database sends becomes code.

A compiled decoder handles the common case only: every column text ('t') or
NULL ('n'). Anything else — unchanged TOAST, binary values, a count mismatch,
malformed bytes — raises, and the caller decodes that message on the general
path (pgoutput.decode_message + relations.decode_row), which stays the
reference for every value and every error message. Each inline form below
gives exactly its converter's result or calls the converter.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from agent.events import Row
from connectors.postgres.pgtypes import INLINE_FORMS, JSON_SCAN, Converter

# (message + PADDING, offset of the TupleData) -> (row, key, offset after the TupleData)
RowDecoder = Callable[[bytes, int], "tuple[Row, Row, int]"]
PADDING: Final = b"\0\0\0\0"

_U16: Final = struct.Struct(">H").unpack_from
# Unsigned length: a corrupt "negative" one moves past the end of the message,
# which the caller's end-of-message check turns into the general path.
_KIND_LENGTH: Final = struct.Struct(">BI").unpack_from


class NotPlainTuple(Exception):
    """The tuple holds a column kind the compiled decoder leaves to the general path."""


# One column: its kind byte and (for 't') the Int32 length in one unpack. A NULL
# at the end of a message has no 4 bytes after it: callers pass the message with
# PADDING appended (see RowDecoder).
_COLUMN: Final = """\
        k, n = KL(buf, pos)
        if k == 116:
            s = pos + 5
            pos = s + n
{convert}
        elif k == 110:
            pos += 1
            v{i} = None
        else:
            raise NotPlainTuple
"""

# Inline forms of the converters named in pgtypes.INLINE_FORMS.
_CONVERT: Final = {
    "int": "            v{i} = int(buf[s:pos])",
    "text": "            v{i} = buf[s:pos].decode()",
    "bool": "            v{i} = (pos - s == 1 and buf[s] == 116) or buf[s:pos] == b'true'",
    # Only a BC date ("0044-03-15 BC") differs from its text; it ends in 'C'.
    "date": "            v{i} = buf[s:pos].decode() if buf[pos - 1] != 67 else C{i}(buf[s:pos])",
    # pgtypes._timestamptz's common case, verbatim; anything else calls it.
    "timestamptz": """\
            t = buf[s:pos].decode()
            if t[-3] in "+-" and t[10] == " ":
                v{i} = f"{{t[:10]}}T{{t[11:]}}:00"
            else:
                v{i} = C{i}(buf[s:pos])""",
    "json": """\
            t = buf[s:pos].decode()
            try:
                v{i}, e = SCAN(t, 0)
            except StopIteration:
                e = -1
            if e != len(t):
                v{i} = C{i}(buf[s:pos])""",
    "call": "            v{i} = C{i}(buf[s:pos])",
}


def compile_row_decoder(
    names: Sequence[str], converters: Sequence[Converter], key_names: Sequence[str]
) -> RowDecoder | None:
    """A decoder for TupleData of exactly these columns; None when the shape does not
    fit one (a key column that is not among the columns: the general path reports it)."""
    if len(names) != len(converters) or len(set(names)) != len(names):
        return None
    index = {name: i for i, name in enumerate(names)}
    if any(k not in index for k in key_names):
        return None
    n = len(names)
    params = [f"N{i}" for i in range(n)] + [f"C{i}" for i in range(n)]
    lines = [
        f"def factory(KL, U16, NotPlainTuple, SCAN{''.join(', ' + p for p in params)}):",
        "    def decode(buf, pos):",
        f"        if U16(buf, pos)[0] != {n}:",
        "            raise NotPlainTuple",
        "        pos += 2",
    ]
    for i, conv in enumerate(converters):
        form = INLINE_FORMS.get(conv, "call")
        lines.append(_COLUMN.format(i=i, convert=_CONVERT[form].format(i=i)).rstrip("\n"))
    row = ", ".join(f"N{i}: v{i}" for i in range(n))
    key = ", ".join(f"N{index[k]}: v{index[k]}" for k in key_names)
    lines.append(f"        return {{{row}}}, {{{key}}}, pos")
    lines.append("    return decode")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<pgoutput row decoder>", "exec"), namespace)  # noqa: S102
    decoder: RowDecoder = namespace["factory"](
        _KIND_LENGTH, _U16, NotPlainTuple, JSON_SCAN, *names, *converters
    )
    return decoder
