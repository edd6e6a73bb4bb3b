"""MySQL/MariaDB values to the JSON of CONTRACT.md, shared by binlog and snapshot.

Choices (documented in docs/mysql.md):
- integers (all sizes, signed and unsigned, TINYINT(1)/BOOL, YEAR, BIT) are
  JSON integers; DECIMAL is an exact decimal string;
- FLOAT is the shortest decimal that reads back as the same 32-bit float, so
  `1.1` stays `1.1`; DOUBLE is a JSON number;
- DATE `2024-02-29`; DATETIME(fsp) `2024-02-29T10:00:00.123` with exactly fsp
  fraction digits; TIMESTAMP(fsp) as a UTC instant with `+00:00`; TIME as MySQL
  prints it, `-838:59:59.000000` (it is a duration, may be negative or > 24 h);
- zero and partly-zero dates (`0000-00-00`, `2024-00-10`) are null: they are
  not instants and no JSON date can hold them;
- character columns are text in their column character set; binary strings,
  BLOB and GEOMETRY are base64; ENUM is its member name, SET the member names
  joined by commas (as MySQL prints them); JSON (MySQL binary JSON, or a
  MariaDB LONGTEXT with a JSON_VALID check) is emitted as JSON.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

_F32 = struct.Struct("<f")

# Python codecs for MySQL character sets; MySQL's latin1 is really cp1252.
_CODECS = {
    "utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "cp1252",
    "ascii": "ascii", "ucs2": "utf-16-be", "utf16": "utf-16-be", "utf16le": "utf-16-le",
    "utf32": "utf-32-be", "cp1250": "cp1250", "cp1251": "cp1251", "cp1256": "cp1256",
    "cp1257": "cp1257", "latin2": "iso8859-2", "greek": "iso8859-7", "hebrew": "iso8859-8",
    "latin5": "iso8859-9", "latin7": "iso8859-13", "koi8r": "koi8-r", "koi8u": "koi8-u",
    "sjis": "shift_jis", "cp932": "cp932", "ujis": "euc-jp", "eucjpms": "euc-jp",
    "gbk": "gbk", "gb2312": "gb2312", "gb18030": "gb18030", "big5": "big5", "euckr": "euc-kr",
    "tis620": "tis-620", "cp850": "cp850", "cp852": "cp852", "cp866": "cp866",
}


def codec_for_charset(charset: str) -> str | None:
    """The Python codec of a MySQL character set; None for `binary`."""
    if charset == "binary":
        return None
    return _CODECS.get(charset, charset)


def text_decoder(codec: str | None) -> Callable[[bytes], Any]:
    """bytes -> JSON value for one character set (binary -> base64)."""
    if codec is None:
        return b64
    if codec == "cp1252":
        return _latin1
    if codec == "utf-8":
        return _utf8
    def decode(raw: bytes) -> str:
        return raw.decode(codec)
    return decode


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8")


# MySQL's latin1 is cp1252, except that the five bytes cp1252 leaves undefined map
# to U+0081, U+008D, ... as in ISO 8859-1: decode as ISO 8859-1, then remap 0x80-0x9F.
_CP1252_HIGH = {b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0)
                if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_LATIN1_FIX = str.maketrans({chr(b): c for b, c in _CP1252_HIGH.items()})


def _latin1(raw: bytes) -> str:
    return raw.decode("latin-1").translate(_LATIN1_FIX)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def float32(value: float) -> float:
    """The shortest decimal that reads back as the same single-precision float."""
    packed = _F32.pack(value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return value


def float_json(value: float) -> float | str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def fraction(micros: int, fsp: int) -> str:
    return "." + f"{micros:06d}"[:fsp] if fsp else ""


def format_date(year: int, month: int, day: int) -> str | None:
    if year == 0 or month == 0 or day == 0:
        return None  # zero / partly-zero date: documented as null
    return f"{year:04d}-{month:02d}-{day:02d}"


def format_datetime(year: int, month: int, day: int, hour: int, minute: int, second: int,
                    micros: int, fsp: int) -> str | None:
    date = format_date(year, month, day)
    if date is None:
        return None
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}{fraction(micros, fsp)}"


def format_time(negative: bool, hours: int, minute: int, second: int, micros: int,
                fsp: int) -> str:
    sign = "-" if negative else ""
    return f"{sign}{hours:02d}:{minute:02d}:{second:02d}{fraction(micros, fsp)}"


def json_text(raw: str) -> Any:
    """A MariaDB JSON (LONGTEXT) value; invalid JSON cannot pass its CHECK."""
    return json.loads(raw)


def set_text(members: tuple[str, ...], mask: int) -> str:
    return ",".join(m for i, m in enumerate(members) if mask >> i & 1)
