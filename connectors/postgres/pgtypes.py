"""PostgreSQL types: pgoutput text values -> JSON values of CONTRACT.md, and DDL type names.

pgoutput sends each column in its type's text output form, which depends on
session settings of the walsender (DateStyle, IntervalStyle, TimeZone,
bytea_output, extra_float_digits). The Source opens the replication
connection with `REPLICATION_SESSION_SETTINGS`; the converters still accept the
other common forms so a server-wide setting cannot corrupt values.

Value representations (documented in CONTRACT.md's values section and here):
- numeric: the exact decimal text, incl. "NaN", "Infinity", "-Infinity".
- float4/float8: JSON numbers; NaN and infinities as "NaN", "Infinity", "-Infinity".
- timestamp: ISO 8601 `YYYY-MM-DDTHH:MM:SS[.ffffff]`; timestamptz the same plus
  the offset the server printed, normalised to `±HH:MM` (UTC on our sessions);
  "infinity"/"-infinity" as strings; BC years in ISO 8601 astronomical numbering
  (1 BC = year 0000, 44 BC = -0043).
- timetz: `HH:MM:SS[.ffffff]±HH:MM`.
- interval: PostgreSQL's ISO 8601 form (IntervalStyle iso_8601, e.g.
  `P1Y2M3DT4H5M6.5S`, `PT0S`); the `postgres` style is converted to it, other
  styles are passed through as text.
- bytea: base64 of the bytes. json/jsonb: the parsed JSON value, numbers exact
  (non-integers as fastjson.JsonNumber: written back as their text).
- money: the text the server prints (locale-dependent, e.g. "$1,234.56").
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from agent import fastjson
from agent.errors import DecodeError

log = logging.getLogger(__name__)

Converter = Callable[[bytes], Any]

# Startup `options` for the replication connection, so text values arrive in the
# forms the fast paths below expect.
REPLICATION_SESSION_SETTINGS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "DateStyle": "ISO",
        "IntervalStyle": "iso_8601",
        "TimeZone": "UTC",
        "bytea_output": "hex",
        "extra_float_digits": "3",
    }
)

# For the Source's resolver (a normal connection: replication connections take no
# bound parameters). typsubscript identifies true arrays; typelem alone would also
# match fixed-length types like `name` and `point`.
TYPE_INFO_QUERY: Final = (
    "SELECT t.oid, format_type(t.oid, NULL), t.typtype, t.typbasetype,"
    " CASE WHEN t.typsubscript = 'array_subscript_handler'::regproc"
    " THEN t.typelem ELSE 0 END"
    " FROM pg_type t WHERE t.oid = %s"
)


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """What pg_type says about a non-builtin type (see TYPE_INFO_QUERY)."""

    oid: int
    name: str  # format_type(oid, NULL), schema-qualified when not on the search path
    typtype: str  # b base, c composite, d domain, e enum, m multirange, p pseudo, r range
    base_oid: int = 0  # domains: the underlying type
    elem_oid: int = 0  # arrays: the element type


TypeResolver = Callable[[int], "TypeInfo | None"]


class UnknownTypeWarnings:
    """Logs one warning per type name that has no mapping (values pass as text)."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def warn(self, type_name: str) -> None:
        if type_name not in self.seen:
            self.seen.add(type_name)
            log.warning(
                "PostgreSQL type %s has no mapping; its values are passed as their text form",
                type_name,
            )


# --- scalar converters (bytes of the text output -> JSON value) -------------

_text: Converter = bytes.decode


def _bool(v: bytes) -> bool:
    # pgoutput and COPY send t/f; the snapshot reader's col::text gives true/false.
    return v == b"t" or v == b"true"


def _float(v: bytes) -> float | str:
    f = float(v)
    if f - f == 0.0:  # finite; inf - inf and nan - nan are nan
        return f
    return v.decode()  # PostgreSQL prints exactly "NaN", "Infinity", "-Infinity"


def _bytea(v: bytes) -> str:
    if v[:2] == b"\\x":
        try:
            raw = binascii.unhexlify(v[2:])
        except binascii.Error as exc:
            raise DecodeError(f"expected hex bytea text, found {v[:40]!r}") from exc
    else:
        raw = _unescape_bytea(v)
    return base64.b64encode(raw).decode("ascii")


def _unescape_bytea(v: bytes) -> bytes:
    """bytea_output=escape: `\\\\` is a backslash, `\\ooo` an octal byte."""
    out = bytearray()
    pos = 0
    while True:
        slash = v.find(b"\\", pos)
        if slash < 0:
            out += v[pos:]
            return bytes(out)
        out += v[pos:slash]
        if v[slash + 1 : slash + 2] == b"\\":
            out.append(0x5C)
            pos = slash + 2
        else:
            digits = v[slash + 1 : slash + 4]
            if len(digits) != 3 or not digits.isdigit():
                raise DecodeError(f"expected an octal escape in bytea text, found {digits!r}")
            out.append(int(digits, 8) & 0xFF)
            pos = slash + 4


def _bc_to_iso(s: str) -> str:
    """'0044-03-15 BC' -> '-0043-03-15' (ISO 8601 astronomical year numbering)."""
    body = s[:-3]
    year, _, rest = body.partition("-")
    astro = 1 - int(year)
    return f"{'-' if astro < 0 else ''}{abs(astro):04d}-{rest}"


def _date(v: bytes) -> str:
    s = v.decode()
    return _bc_to_iso(s) if s.endswith(" BC") else s


def _tz_offset(s: str, start: int) -> str:
    """Normalise a trailing offset '+05' -> '+05:00' (PostgreSQL omits zero minutes)."""
    i = max(s.rfind("+", start), s.rfind("-", start))
    if i < 0:
        return s
    return s + ":00" if len(s) - i == 3 else s


def _timestamp(v: bytes) -> str:
    s = v.decode()
    if s.endswith("infinity"):
        return s
    if s.endswith(" BC"):
        s = _bc_to_iso(s)
    return s.replace(" ", "T", 1)


def _timestamptz(v: bytes) -> str:
    s = v.decode()
    if s[-3] in "+-" and s[10] == " ":  # the common case: 'YYYY-MM-DD HH:MM:SS[.f]+00'
        return f"{s[:10]}T{s[11:]}:00"
    if s.endswith("infinity"):
        return s
    bc = s.endswith(" BC")
    if bc:
        s = _bc_to_iso(s)
    s = s.replace(" ", "T", 1)
    t = s.find("T")
    return _tz_offset(s, t + 1)


def _timetz(v: bytes) -> str:
    return _tz_offset(v.decode(), 1)


_INTERVAL_UNITS: Final = MappingProxyType(
    {"year": 0, "years": 0, "mon": 1, "mons": 1, "day": 2, "days": 2}
)


def _interval(v: bytes) -> str:
    s = v.decode()
    if s.startswith("P"):
        return s
    return _postgres_interval_to_iso(s) or s


def _postgres_interval_to_iso(s: str) -> str | None:
    """IntervalStyle 'postgres' ('1 year 2 mons -3 days +04:05:06.5') -> ISO 8601."""
    ymd = [0, 0, 0]
    hms: tuple[str, int, int, str] | None = None
    tokens = s.split()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if ":" in tok:
            sign = "-" if tok[0] == "-" else ""
            parts = tok.lstrip("+-").split(":")
            if len(parts) != 3:
                return None
            hms = (sign, int(parts[0]), int(parts[1]), parts[2])
            i += 1
        elif i + 1 < len(tokens) and tokens[i + 1] in _INTERVAL_UNITS:
            ymd[_INTERVAL_UNITS[tokens[i + 1]]] = int(tok)
            i += 2
        else:
            return None
    out = ["P"]
    for value, unit in zip(ymd, "YMD", strict=True):
        if value:
            out.append(f"{value}{unit}")
    if hms is not None:
        sign, hours, minutes, seconds = hms
        whole, _, frac = seconds.partition(".")
        frac = frac.rstrip("0")
        sec_text = f"{int(whole)}.{frac}" if frac else str(int(whole))
        if hours or minutes or sec_text != "0":
            out.append("T")
            if hours:
                out.append(f"{sign}{hours}H")
            if minutes:
                out.append(f"{sign}{minutes}M")
            if sec_text != "0":
                out.append(f"{sign}{sec_text}S")
    return "".join(out) if len(out) > 1 else "PT0S"


# The C scanner directly: json.loads spends more time checking its arguments and
# sniffing the encoding than parsing a small document. Numbers stay exact
# (fastjson.JsonNumber keeps a non-integer's text: 1.50 is not 1.5 to jsonb).
JSON_SCAN: Final = fastjson.EXACT_SCAN


def _json(v: bytes) -> Any:
    s = v.decode()
    try:
        value, end = JSON_SCAN(s, 0)
        if end == len(s):
            return value
    except (StopIteration, ValueError):
        pass
    try:  # leading/trailing whitespace (json keeps its input verbatim) or an error
        return fastjson.loads_exact(s)
    except ValueError as exc:
        raise DecodeError(f"expected JSON text, found {v[:40]!r}") from exc


# --- arrays -----------------------------------------------------------------


def parse_array(text: bytes, element: Converter) -> list[Any]:
    """Parse PostgreSQL array output (`{1,NULL,"a \\"b\\""}`, nested, with bounds)."""
    try:
        pos = 0
        if text[:1] == b"[":  # non-default bounds: "[0:1]={1,2}"
            pos = text.index(b"=") + 1
        if b'"' not in text and text.find(b"{", pos + 1) < 0:  # flat, nothing quoted
            if text[pos : pos + 1] != b"{" or text[-1:] != b"}":
                raise DecodeError(f"expected an array literal, found {text[:40]!r}")
            inner = text[pos + 1 : -1]
            if not inner:
                return []
            return [None if p == b"NULL" else element(p) for p in inner.split(b",")]
        result, pos = _array_level(text, pos, element, 0)
    except (IndexError, ValueError) as exc:
        raise DecodeError(f"expected an array literal, found {text[:40]!r}") from exc
    if pos != len(text):
        raise DecodeError(f"expected the end of an array literal, found {text[pos : pos + 20]!r}")
    return result


_MAX_ARRAY_DIMS: Final = 6  # PostgreSQL's MAXDIM


def _array_level(text: bytes, pos: int, element: Converter, depth: int) -> tuple[list[Any], int]:
    if depth >= _MAX_ARRAY_DIMS:
        raise DecodeError(f"expected at most {_MAX_ARRAY_DIMS} array dimensions, found more")
    if text[pos] != 0x7B:  # '{'
        raise DecodeError(f"expected '{{' in an array literal, found {text[pos : pos + 20]!r}")
    pos += 1
    items: list[Any] = []
    if text[pos] == 0x7D:  # '}'
        return items, pos + 1
    while True:
        c = text[pos]
        if c == 0x7B:
            sub, pos = _array_level(text, pos, element, depth + 1)
            items.append(sub)
        elif c == 0x22:  # '"': quoted, backslash escapes
            pos += 1
            buf = bytearray()
            while True:
                quote = text.index(b'"', pos)
                slash = text.find(b"\\", pos, quote)
                if slash < 0:
                    buf += text[pos:quote]
                    pos = quote + 1
                    break
                buf += text[pos:slash]
                buf.append(text[slash + 1])
                pos = slash + 2
            items.append(element(bytes(buf)))
        else:
            end = pos
            while text[end] not in (0x2C, 0x7D):
                end += 1
            raw = text[pos:end].strip()
            items.append(None if raw.upper() == b"NULL" else element(raw))
            pos = end
        c = text[pos]
        pos += 1
        if c == 0x7D:
            return items, pos
        if c != 0x2C:
            raise DecodeError(f"expected ',' or '}}' in an array literal, found {chr(c)!r}")


def _array_of(element: Converter) -> Converter:
    def convert(v: bytes) -> list[Any]:
        return parse_array(v, element)

    return convert


# Converters whose work the compiled row decoders (rowdecoder.py) write inline,
# by name of the inline form. The functions above stay the reference: an
# inline form either gives exactly their result or calls them.
INLINE_FORMS: Final[Mapping[Converter, str]] = MappingProxyType(
    {
        int: "int",
        _text: "text",
        _bool: "bool",
        _date: "date",
        _timestamptz: "timestamptz",
        _json: "json",
    }
)


# --- type tables ------------------------------------------------------------

_SCALARS: Final[Mapping[int, Converter]] = MappingProxyType(
    {
        16: _bool,
        17: _bytea,
        18: _text,  # "char"
        19: _text,  # name
        20: int,
        21: int,
        23: int,
        25: _text,
        26: int,  # oid
        114: _json,
        142: _text,  # xml
        650: _text,  # cidr
        700: _float,
        701: _float,
        774: _text,  # macaddr8
        790: _text,  # money, as printed (lc_monetary)
        829: _text,  # macaddr
        869: _text,  # inet
        1042: _text,  # bpchar, keeps its blank padding
        1043: _text,
        1082: _date,
        1083: _text,  # time
        1114: _timestamp,
        1184: _timestamptz,
        1186: _interval,
        1266: _timetz,
        1560: _text,  # bit
        1562: _text,  # varbit
        1700: _text,  # numeric: exact text incl. NaN / ±Infinity
        2950: _text,  # uuid
        3802: _json,
    }
)

# Builtin array type oid -> element type oid.
ARRAY_ELEMENTS: Final[Mapping[int, int]] = MappingProxyType(
    {
        1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23,
        1009: 25, 1028: 26, 199: 114, 143: 142, 651: 650, 1021: 700, 1022: 701,
        775: 774, 791: 790, 1040: 829, 1041: 869, 1014: 1042, 1015: 1043,
        1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186, 1270: 1266,
        1561: 1560, 1563: 1562, 1231: 1700, 2951: 2950, 3807: 3802,
    }
)  # fmt: skip

# pg_catalog type names -> oid. pgoutput's Type message for a domain carries the
# domain's oid with its *base* type's namespace and name, so a domain over a
# builtin converts correctly even without a resolver.
_BUILTIN_OIDS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "bool": 16, "bytea": 17, "char": 18, "name": 19, "int8": 20, "int2": 21,
        "int4": 23, "text": 25, "oid": 26, "json": 114, "xml": 142, "cidr": 650,
        "float4": 700, "float8": 701, "macaddr8": 774, "money": 790, "macaddr": 829,
        "inet": 869, "bpchar": 1042, "varchar": 1043, "date": 1082, "time": 1083,
        "timestamp": 1114, "timestamptz": 1184, "interval": 1186, "timetz": 1266,
        "bit": 1560, "varbit": 1562, "numeric": 1700, "uuid": 2950, "jsonb": 3802,
    }
)  # fmt: skip

_MAX_TYPE_DEPTH: Final = 16  # domains of domains; a cycle would be a corrupt catalog


class TypeConverters:
    """Builds and caches one converter per type oid.

    `resolver` answers for non-builtin oids (domains, enums, arrays of them,
    extension types) from pg_type; without one every such type is "unknown".
    """

    __slots__ = ("_cache", "_names", "resolver", "warnings")

    def __init__(
        self, resolver: TypeResolver | None = None, warnings: UnknownTypeWarnings | None = None
    ) -> None:
        self.resolver = resolver
        self.warnings = warnings if warnings is not None else UnknownTypeWarnings()
        self._cache: dict[int, Converter] = {}
        self._names: dict[int, tuple[str, str]] = {}

    def note_type(self, oid: int, namespace: str, name: str) -> None:
        """A pgoutput Type message: remember the name, rebuild on next use."""
        self._names[oid] = (namespace, name)
        self._cache.pop(oid, None)

    def for_oid(self, oid: int) -> Converter:
        conv = self._cache.get(oid)
        if conv is None:
            conv = self._cache[oid] = self._build(oid, 0)
        return conv

    def row(self, oids: tuple[int, ...]) -> tuple[Converter, ...]:
        return tuple(self.for_oid(oid) for oid in oids)

    def _build(self, oid: int, depth: int) -> Converter:
        scalar = _SCALARS.get(oid)
        if scalar is not None:
            return scalar
        elem = ARRAY_ELEMENTS.get(oid)
        if elem is not None:
            return _array_of(self._build(elem, depth + 1))
        info = self.resolver(oid) if self.resolver is not None else None
        if info is None or depth > _MAX_TYPE_DEPTH:
            namespace, name = self._names.get(oid, ("", ""))
            builtin = _BUILTIN_OIDS.get(name) if not namespace else None
            if builtin is not None:
                return self._build(builtin, depth + 1)
            self.warnings.warn(f"{namespace}.{name}" if namespace else name or f"oid {oid}")
            return _text
        if info.elem_oid:
            return _array_of(self._build(info.elem_oid, depth + 1))
        if info.typtype == "d" and info.base_oid:
            return self._build(info.base_oid, depth + 1)
        if info.typtype == "e":
            return _text
        self.warnings.warn(info.name)
        return _text


# --- DDL type names (format_type) ---------------------------------------------

_VARHDRSZ: Final = 4

_FIXED_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        16: "boolean", 17: "bytea", 18: '"char"', 19: "name", 20: "bigint",
        21: "smallint", 23: "integer", 25: "text", 26: "oid", 114: "json",
        142: "xml", 650: "cidr", 700: "real", 701: "double precision",
        774: "macaddr8", 790: "money", 829: "macaddr", 869: "inet", 1082: "date",
        2950: "uuid", 3802: "jsonb",
    }
)  # fmt: skip

_INTERVAL_FIELDS: Final[Mapping[int, str]] = MappingProxyType(
    {
        1 << 2: " year", 1 << 1: " month", 1 << 3: " day", 1 << 10: " hour",
        1 << 11: " minute", 1 << 12: " second", (1 << 2) | (1 << 1): " year to month",
        (1 << 3) | (1 << 10): " day to hour",
        (1 << 3) | (1 << 10) | (1 << 11): " day to minute",
        (1 << 3) | (1 << 10) | (1 << 11) | (1 << 12): " day to second",
        (1 << 10) | (1 << 11): " hour to minute",
        (1 << 10) | (1 << 11) | (1 << 12): " hour to second",
        (1 << 11) | (1 << 12): " minute to second",
    }
)  # fmt: skip


def _time_name(base: str, typmod: int, zone: str) -> str:
    precision = f"({typmod})" if typmod >= 0 else ""
    return f"{base}{precision} {zone}"


def _builtin_name(oid: int, typmod: int) -> str | None:
    name = _FIXED_NAMES.get(oid)
    if name is not None:
        return name
    if oid == 1700:
        if typmod < _VARHDRSZ:
            return "numeric"
        mod = typmod - _VARHDRSZ
        scale = ((mod & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15 allows negative scale
        return f"numeric({(mod >> 16) & 0xFFFF},{scale})"
    if oid in (1042, 1043, 1560, 1562):
        base = {1042: "character", 1043: "character varying", 1560: "bit", 1562: "bit varying"}
        if oid in (1560, 1562):
            length = typmod  # bit types store the length without a header
        else:
            length = typmod - _VARHDRSZ if typmod >= _VARHDRSZ else -1
        if length < 0:
            return "bpchar" if oid == 1042 else base[oid]
        return f"{base[oid]}({length})"
    if oid == 1083:
        return _time_name("time", typmod, "without time zone")
    if oid == 1266:
        return _time_name("time", typmod, "with time zone")
    if oid == 1114:
        return _time_name("timestamp", typmod, "without time zone")
    if oid == 1184:
        return _time_name("timestamp", typmod, "with time zone")
    if oid == 1186:
        if typmod < 0:
            return "interval"
        fields = _INTERVAL_FIELDS.get((typmod >> 16) & 0x7FFF, "")
        precision = typmod & 0xFFFF
        return f"interval{fields}" + (f"({precision})" if precision != 0xFFFF else "")
    return None


def format_type(
    oid: int,
    typmod: int,
    resolver: TypeResolver | None = None,
    warnings: UnknownTypeWarnings | None = None,
) -> str:
    """The type as DDL spells it, like PostgreSQL's format_type(oid, typmod).

    A type the resolver no longer knows (dropped since the logged change) is
    named "text": its values are text anyway, and a restore can still hold them.
    """
    elem = ARRAY_ELEMENTS.get(oid)
    if elem is not None:
        return format_type(elem, typmod, resolver, warnings) + "[]"
    name = _builtin_name(oid, typmod)
    if name is not None:
        return name
    info = resolver(oid) if resolver is not None else None
    if info is None:
        if warnings is not None:
            warnings.warn(f"oid {oid}")
        return "text"
    return info.name
