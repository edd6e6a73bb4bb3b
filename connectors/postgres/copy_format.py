"""CONTRACT.md JSON values <-> PostgreSQL's text forms, in COPY's text format.

Load: each JSON value becomes its type's text input form (bytea from base64
to hex, json/jsonb values as their exact JSON text, arrays as array
literals, astronomical years back to BC), escaped for COPY text and joined
into whole lines, so a table is written with a few large `copy.write` calls
instead of a Python call per value inside the driver.

Read back: `COPY ... TO STDOUT` lines split on tabs, unescaped, and passed
as bytes to the capture path's converters (connectors.postgres.pgtypes),
the same functions that made the archived values.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from agent import fastjson

TextValue = Callable[[Any], str | None]
RowConv = Callable[[bytes], list[Any]]

# PostgreSQL's own spacing (", " and ": ", as jsonb prints): a `json` column
# keeps its input text, and this is the form most often written into it.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), allow_nan=False).encode


def _bc_date(s: str) -> str:
    """ISO astronomical year ('-0043-03-15...', '0000-...') -> PostgreSQL's '0044-03-15... BC'."""
    neg = s.startswith("-")
    body = s[1:] if neg else s
    year, _, rest = body.partition("-")
    astro = -int(year) if neg else int(year)
    return f"{1 - astro:04d}-{rest} BC"


def _temporal(v: Any) -> str:
    s = str(v)
    if s.startswith("-") or s.startswith("0000-"):
        return _bc_date(s)
    return s


def _json_text(v: Any) -> str:
    """Restore keeps json/jsonb values as their exact JSON text (bytes, see
    agent.restore.fold); any other value is serialised, numbers as parsed."""
    if v.__class__ is bytes:
        return v.decode("utf-8")
    return fastjson.dumps_text(v)


# A JSON string literal (whole, so its commas and colons are skipped) or a separator.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[,:]')


def _json_spaced(v: Any) -> str:
    """Exact JSON text with ", " and ": " as jsonb prints it (and as most writers of
    a `json` column do), the numbers untouched."""
    return _JSON_TOKEN.sub(lambda m: m[0] + " " if len(m[0]) == 1 else m[0], _json_text(v))


def _bytea(v: Any) -> str:
    return "\\x" + base64.b64decode(v).hex()


def _bool(v: Any) -> str:
    return "t" if v is True else "f" if v is False else str(v)


def _plain(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return _JSON(v)
    return repr(v) if isinstance(v, float) else str(v)


def _base_converter(type_name: str) -> Callable[[Any], str]:
    t = type_name.lower()
    if t == "bytea":
        return _bytea
    if t == "jsonb":  # re-parsed by the server: compact is fine
        return _json_text
    if t == "json":  # kept verbatim by the server: PostgreSQL's own spacing
        return _json_spaced
    if t == "boolean":
        return _bool
    if t == "date" or t.startswith("timestamp"):
        return _temporal
    return _plain


def _array_literal(v: Any, element: Callable[[Any], str]) -> str:
    if not isinstance(v, list):
        return element(v)
    items = []
    for item in v:
        if item is None:
            items.append("NULL")
        elif isinstance(item, list):
            items.append(_array_literal(item, element))
        else:
            text = element(item)
            items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def text_value(type_name: str) -> TextValue:
    """JSON value -> the type's text input (None stays NULL)."""
    if type_name.endswith("[]"):
        element = _base_converter(type_name.rstrip("[]").strip())

        def array(v: Any) -> str | None:
            return None if v is None else _array_literal(v, element)

        return array
    base = _base_converter(type_name)

    def scalar(v: Any) -> str | None:
        return None if v is None else base(v)

    return scalar


# Types whose text form never holds a tab, newline, carriage return or
# backslash (by name without a type modifier): their values need no COPY escaping.
_PLAIN_TEXT_TYPES = frozenset({
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean",
    "date", "timestamp without time zone", "timestamp with time zone",
    "time without time zone", "time with time zone", "timestamp", "time", "uuid",
    "interval", "inet", "cidr", "macaddr", "macaddr8", "oid",
})  # fmt: skip
_TYPMOD = re.compile(r"\([^)]*\)")
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]").search


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _field(type_name: str) -> Callable[[Any], str]:
    """Non-null JSON value -> one escaped COPY text field."""
    t = type_name.lower()
    if t.endswith("[]"):
        element = _base_converter(t.rstrip("[]").strip())

        def array(v: Any) -> str:
            s = _array_literal(v, element)
            return _escape(s) if _NEEDS_ESCAPE(s) else s

        return array
    base = _base_converter(t)
    if t in ("smallint", "integer", "bigint"):
        return str
    if t == "bytea":  # '\\x...': the backslash itself needs COPY's escape
        return lambda v: "\\\\x" + base64.b64decode(v).hex()
    if " ".join(_TYPMOD.sub("", t).split()) in _PLAIN_TEXT_TYPES:
        return base

    def escaped(v: Any) -> str:
        s = base(v)
        return _escape(s) if _NEEDS_ESCAPE(s) else s

    return escaped


def copy_line(type_names: Sequence[str]) -> Callable[[Sequence[Any]], str]:
    """A function that turns one row of JSON values into a COPY text line (with newline)."""
    fields = [_field(t) for t in type_names]

    def line(values: Sequence[Any]) -> str:
        return (
            "\t".join(
                ["\\N" if v is None else f(v) for f, v in zip(fields, values, strict=True)]
            )
            + "\n"
        )

    return line


_UNESCAPE = re.compile(rb"\\([\\bfnrtv]|[0-7]{1,3}|x[0-9a-fA-F]{1,2})")
_SIMPLE = {b"\\": b"\\", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t",
           b"v": b"\v"}  # fmt: skip


def _unescape_one(m: re.Match[bytes]) -> bytes:
    code = m.group(1)
    simple = _SIMPLE.get(code)
    if simple is not None:
        return simple
    if code[:1] == b"x":
        return bytes([int(code[1:], 16)])
    return bytes([int(code, 8) & 0xFF])


def copy_row_reader(converters: Sequence[Callable[[bytes], Any]]) -> RowConv:
    """One `COPY TO STDOUT` text line (bytes, with its newline) -> JSON values."""
    convs = tuple(converters)
    n = len(convs)

    def convert(line: bytes) -> list[Any]:
        parts = line[:-1].split(b"\t") if line.endswith(b"\n") else line.split(b"\t")
        if len(parts) != n:
            raise ValueError(f"COPY line with {len(parts)} fields, expected {n}")
        out: list[Any] = []
        for f, raw in zip(convs, parts, strict=True):
            if raw == b"\\N":
                out.append(None)
            elif b"\\" in raw:
                out.append(f(_UNESCAPE.sub(_unescape_one, raw)))
            else:
                out.append(f(raw))
        return out

    return convert
