"""Per-table row decoders compiled from a TABLE_MAP event.

A decoder is a list of small per-column reader closures chosen once per table
map, so decoding a row is one loop of direct calls: no per-value type dispatch,
no per-row objects beyond the row dict. This is where the speed of the MySQL
source comes from (see bench/mysql_decode.py).
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Iterator
from typing import Any

from agent.errors import DecodeError
from connectors.mysql import types as t
from connectors.mysql.binlog_events import read_lenenc
from connectors.mysql.table_map import (
    T_BIT,
    T_BLOB,
    T_DATE,
    T_DATETIME,
    T_DATETIME2,
    T_DOUBLE,
    T_ENUM,
    T_FLOAT,
    T_GEOMETRY,
    T_INT24,
    T_JSON,
    T_LONG,
    T_LONG_BLOB,
    T_LONGLONG,
    T_MEDIUM_BLOB,
    T_NEWDECIMAL,
    T_SET,
    T_SHORT,
    T_STRING,
    T_TIME,
    T_TIME2,
    T_TIMESTAMP,
    T_TIMESTAMP2,
    T_TINY,
    T_TINY_BLOB,
    T_VAR_STRING,
    T_VARCHAR,
    T_YEAR,
    MappedColumn,
    TableMap,
)

Reader = Callable[[bytes, int], tuple[Any, int]]
Row = dict[str, Any]

_INT_FORMATS = {
    (T_TINY, False): "<b", (T_TINY, True): "<B", (T_SHORT, False): "<h", (T_SHORT, True): "<H",
    (T_LONG, False): "<i", (T_LONG, True): "<I", (T_LONGLONG, False): "<q",
    (T_LONGLONG, True): "<Q", (T_FLOAT, False): "<f", (T_DOUBLE, False): "<d",
    (T_FLOAT, True): "<f", (T_DOUBLE, True): "<d",
}
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _fixed(fmt: str, convert: Callable[[Any], Any] | None = None) -> Reader:
    s = struct.Struct(fmt)
    size, unpack = s.size, s.unpack_from
    if convert is None:
        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            return unpack(buf, pos)[0], pos + size
    else:
        conv = convert
        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            return conv(unpack(buf, pos)[0]), pos + size
    return read


def _int24(unsigned: bool) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        return int.from_bytes(buf[pos : pos + 3], "little", signed=not unsigned), pos + 3
    return read


def _length_prefixed(prefix: int, convert: Callable[[bytes], Any]) -> Reader:
    if prefix == 1:
        def read1(buf: bytes, pos: int) -> tuple[Any, int]:
            end = pos + 1 + buf[pos]
            return convert(buf[pos + 1 : end]), end
        return read1
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        n = int.from_bytes(buf[pos : pos + prefix], "little")
        end = pos + prefix + n
        return convert(buf[pos + prefix : end]), end
    return read


def _decimal(precision: int, scale: int) -> Reader:
    """MySQL's packed decimal: groups of 9 digits in 4 bytes, sign in the top bit."""
    intg = precision - scale
    intg0, intg0x = divmod(intg, 9)
    frac0, frac0x = divmod(scale, 9)
    # (bits, digits) of every group, most significant first.
    groups = ([(8 * _DIG2BYTES[intg0x], intg0x)] if intg0x else []) + [(32, 9)] * intg0
    fgroups = [(32, 9)] * frac0 + ([(8 * _DIG2BYTES[frac0x], frac0x)] if frac0x else [])
    size = sum(b for b, _ in groups + fgroups) // 8
    sign = 1 << (8 * size - 1)
    everything = (1 << (8 * size)) - 1
    int_specs = tuple(reversed([((1 << b) - 1, b, 10 ** d) for b, d in groups]))
    frac_specs = tuple(reversed([((1 << b) - 1, b, 10 ** d) for b, d in fgroups]))

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        value = int.from_bytes(buf[pos : pos + size], "big")
        negative = not value & sign
        value ^= sign
        if negative:
            value ^= everything
        frac = 0
        mult = 1
        for mask, bits, scale10 in frac_specs:
            frac += (value & mask) * mult
            mult *= scale10
            value >>= bits
        integer = 0
        mult = 1
        for mask, bits, scale10 in int_specs:
            integer += (value & mask) * mult
            mult *= scale10
            value >>= bits
        text = f"{integer}.{frac:0{scale}d}" if scale else str(integer)
        if negative and (integer or frac):
            text = "-" + text
        return text, pos + size
    return read


def _frac(buf: bytes, pos: int, fsp: int) -> tuple[int, int]:
    """Fractional seconds stored in (fsp+1)//2 big-endian bytes -> microseconds."""
    n = (fsp + 1) // 2
    if not n:
        return 0, pos
    value = int.from_bytes(buf[pos : pos + n], "big")
    return value * 10 ** (6 - 2 * n), pos + n


def _datetime2(fsp: int) -> Reader:
    n = (fsp + 1) // 2
    size = 5 + n
    frac_scale = 10 ** (6 - 2 * n)
    # Per-reader memo of the formatted date (bits 17..39) and time of day (bits 0..16):
    # formatting is the cost here, and rows of one table share few distinct days.
    dates: dict[int, str | None] = {}
    times: dict[int, str] = {}

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        v = int.from_bytes(buf[pos : pos + 5], "big") - 0x8000000000
        day_bits = v >> 17
        date = dates.get(day_bits, "")
        if date == "":
            ym = day_bits >> 5 & 0x1FFFF
            date = t.format_date(ym // 13, ym % 13, day_bits & 0x1F)
            if len(dates) > 4096:
                dates.clear()
            dates[day_bits] = date
        if date is None:
            return None, pos + size  # zero or partly-zero date
        tod = v & 0x1FFFF
        clock = times.get(tod)
        if clock is None:
            clock = f"T{tod >> 12 & 0x1F:02d}:{tod >> 6 & 0x3F:02d}:{tod & 0x3F:02d}"
            if len(times) > 100_000:
                times.clear()
            times[tod] = clock
        if n:
            micros = int.from_bytes(buf[pos + 5 : pos + size], "big") * frac_scale
            return date + clock + f".{micros:06d}"[: fsp + 1], pos + size
        return date + clock, pos + size
    return read


def _timestamp2(fsp: int) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        seconds = int.from_bytes(buf[pos : pos + 4], "big")
        micros, end = _frac(buf, pos + 4, fsp)
        if seconds == 0 and micros == 0:
            return None, end  # the zero timestamp
        instant = _EPOCH + dt.timedelta(seconds=seconds)
        return instant.strftime("%Y-%m-%dT%H:%M:%S") + t.fraction(micros, fsp) + "+00:00", end
    return read


def _time2(fsp: int) -> Reader:
    n = (fsp + 1) // 2

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        if n == 3:
            packed = int.from_bytes(buf[pos : pos + 6], "big") - 0x800000000000
        else:
            intpart = int.from_bytes(buf[pos : pos + 3], "big") - 0x800000
            frac = int.from_bytes(buf[pos + 3 : pos + 3 + n], "big") if n else 0
            if intpart < 0 and frac:
                intpart += 1
                frac -= 1 << (8 * n)
            packed = (intpart << 24) + frac * 10 ** (6 - 2 * n)
        negative = packed < 0
        packed = abs(packed)
        hms, micros = packed >> 24, packed % (1 << 24)
        return t.format_time(negative, hms >> 12 & 0x3FF, hms >> 6 & 0x3F, hms & 0x3F, micros,
                             fsp), pos + 3 + n
    return read


def _date(buf: bytes, pos: int) -> tuple[Any, int]:
    v = int.from_bytes(buf[pos : pos + 3], "little")
    return t.format_date(v >> 9, v >> 5 & 15, v & 31), pos + 3


def _year(buf: bytes, pos: int) -> tuple[Any, int]:
    v = buf[pos]
    return (1900 + v if v else 0), pos + 1


def _old_timestamp(buf: bytes, pos: int) -> tuple[Any, int]:
    seconds = int.from_bytes(buf[pos : pos + 4], "little")
    if not seconds:
        return None, pos + 4
    return (_EPOCH + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S+00:00"), pos + 4


def _old_datetime(buf: bytes, pos: int) -> tuple[Any, int]:
    v = int.from_bytes(buf[pos : pos + 8], "little")
    d, tm = divmod(v, 1000000)
    return t.format_datetime(d // 10000, d // 100 % 100, d % 100, tm // 10000, tm // 100 % 100,
                             tm % 100, 0, 0), pos + 8


def _old_time(buf: bytes, pos: int) -> tuple[Any, int]:
    v = int.from_bytes(buf[pos : pos + 3], "little", signed=True)
    neg, v = v < 0, abs(v)
    return t.format_time(neg, v // 10000, v // 100 % 100, v % 100, 0, 0), pos + 3


def _bit(meta: int) -> Reader:
    nbytes = ((meta >> 8) * 8 + (meta & 0xFF) + 7) // 8

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        return int.from_bytes(buf[pos : pos + nbytes], "big"), pos + nbytes
    return read


def _mysql_json(meta: int) -> Reader:
    from pymysqlreplication.json_binary import parse_json  # only MySQL 8 writes binary JSON

    def convert(raw: bytes) -> Any:
        if not raw:
            return None
        return _jsonable(parse_json(raw[0], raw[1:]))
    return _length_prefixed(meta, convert)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_jsonable(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def column_reader(col: MappedColumn, codec: str | None, is_json: bool) -> Reader:
    """The reader of one column's binlog value (the column is known not to be NULL)."""
    typ, meta, unsigned = col.type, col.meta, col.unsigned
    if (typ, unsigned) in _INT_FORMATS:
        if typ == T_FLOAT:
            return _fixed("<f", t.float32)
        if typ == T_DOUBLE:
            return _fixed("<d")  # MySQL stores no NaN or infinity
        return _fixed(_INT_FORMATS[typ, unsigned])
    if typ == T_INT24:
        return _int24(unsigned)
    if typ == T_NEWDECIMAL:
        return _decimal(meta >> 8, meta & 0xFF)
    if typ in (T_DATETIME2, T_TIMESTAMP2, T_TIME2) and not 0 <= meta <= 6:
        raise DecodeError(
            f"expected a fractional-second precision of 0..6 for {col.name}, found {meta}"
        )
    if typ == T_DATETIME2:
        return _datetime2(meta)
    if typ == T_TIMESTAMP2:
        return _timestamp2(meta)
    if typ == T_TIME2:
        return _time2(meta)
    if typ == T_DATE:
        return _date
    if typ == T_YEAR:
        return _year
    if typ == T_TIMESTAMP:
        return _old_timestamp
    if typ == T_DATETIME:
        return _old_datetime
    if typ == T_TIME:
        return _old_time
    if typ == T_BIT:
        return _bit(meta)
    if typ == T_ENUM:
        members = col.values
        return _fixed("<B" if meta == 1 else "<H", lambda i: members[i - 1] if i else "")
    if typ == T_SET:
        members = col.values
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}.get(meta)
        if fmt is None:
            size = meta
            def read_set(buf: bytes, pos: int) -> tuple[Any, int]:
                mask = int.from_bytes(buf[pos : pos + size], "little")
                return t.set_text(members, mask), pos + size
            return read_set
        return _fixed(fmt, lambda mask: t.set_text(members, mask))
    if typ == T_JSON:
        return _mysql_json(meta)
    if typ in (T_VARCHAR, T_VAR_STRING):
        return _length_prefixed(1 if meta < 256 else 2, t.text_decoder(codec))
    if typ == T_STRING:
        decode = t.text_decoder(codec)
        if codec is None:  # BINARY(n): the binlog drops the trailing 0x00 padding
            width = meta
            def padded(raw: bytes) -> Any:
                return t.b64(raw.ljust(width, b"\x00"))
            decode = padded
        return _length_prefixed(1 if meta < 256 else 2, decode)
    if typ in (T_BLOB, T_TINY_BLOB, T_MEDIUM_BLOB, T_LONG_BLOB, T_GEOMETRY):
        if typ == T_GEOMETRY:
            return _length_prefixed(meta, t.b64)
        decode = t.text_decoder(codec)
        if is_json and codec is not None:
            text_decode = decode
            def as_json(raw: bytes) -> Any:
                return t.json_text(text_decode(raw))
            decode = as_json
        return _length_prefixed(meta, decode)
    raise DecodeError(f"expected a supported column type for {col.name}, found wire type {typ}")


class RowDecoder:
    """Decodes the row images of one table map."""

    __slots__ = ("all_present", "names", "ncols", "null_bytes", "pairs", "readers")

    def __init__(self, table_map: TableMap, codecs: Callable[[int | None], str | None],
                 json_columns: frozenset[str]) -> None:
        self.names = tuple(c.name for c in table_map.columns)
        self.ncols = len(self.names)
        if not self.ncols:  # a row of no columns takes no bytes: `rows` would never end
            raise DecodeError(
                f"expected columns in the table map of {table_map.schema}.{table_map.table}, "
                f"found none")
        self.readers = tuple(
            column_reader(c, codecs(c.collation), c.name in json_columns) for c in table_map.columns
        )
        self.pairs = tuple(zip(self.names, self.readers, strict=True))
        self.all_present = (1 << self.ncols) - 1
        self.null_bytes = (self.ncols + 7) >> 3

    def rows(self, buf: bytes, pos: int, end: int, present: int, present2: int | None
             ) -> Iterator[tuple[Row | None, Row]]:
        """(before, after) for updates; (None, row) otherwise. `present` is a column bitmask."""
        if present2 is None:
            while pos < end:
                row, pos = self._row(buf, pos, present)
                yield None, row
        else:
            while pos < end:
                before, pos = self._row(buf, pos, present)
                after, pos = self._row(buf, pos, present2)
                yield before, after

    def _row(self, buf: bytes, pos: int, present: int) -> tuple[Row, int]:
        if present == self.all_present:
            # The common case (full row image): a null bitmap of all zeros means no checks.
            end = pos + self.null_bytes
            if not any(buf[pos:end]):
                row: Row = {}
                for name, read in self.pairs:
                    row[name], end = read(buf, end)
                return row, end
        return self._sparse_row(buf, pos, present)

    def _sparse_row(self, buf: bytes, pos: int, present: int) -> tuple[Row, int]:
        names, readers = self.names, self.readers
        full = present == (1 << self.ncols) - 1
        count = self.ncols if full else bin(present).count("1")
        if not count:  # an image of no columns takes no bytes: `rows` would never end
            raise DecodeError("expected a row image with at least one column, found none")
        nbytes = (count + 7) >> 3
        nulls = int.from_bytes(buf[pos : pos + nbytes], "little")
        pos += nbytes
        row: Row = {}
        bit = 0
        for i in range(self.ncols):
            if not full and not present >> i & 1:
                continue
            if nulls >> bit & 1:
                row[names[i]] = None
            else:
                row[names[i]], pos = readers[i](buf, pos)
            bit += 1
        return row, pos


def parse_rows_header(body: bytes, event_type_v2: bool, is_update: bool
                      ) -> tuple[int, int, int | None, int]:
    """(ncols, present, present2, position of the first row) of a rows event body."""
    pos = 8
    if event_type_v2:
        (extra,) = struct.unpack_from("<H", body, pos)
        pos += extra
    ncols, pos = read_lenenc(body, pos)
    nbytes = (ncols + 7) // 8
    present = int.from_bytes(body[pos : pos + nbytes], "little")
    pos += nbytes
    present2 = None
    if is_update:
        present2 = int.from_bytes(body[pos : pos + nbytes], "little")
        pos += nbytes
    return ncols, present, present2, pos
