"""Decoder of pgoutput logical replication messages, protocol versions 1 and 2.

Pure: bytes in, frozen dataclasses out. The input is the payload of one
XLogData message (the walsender's `w` header already stripped, or skipped
with `offset`). Text column values stay `bytes` until a type converter runs,
so decoding a row allocates one bytes object per non-null column and nothing
else. Anything malformed raises `DecodeError`; every loop is bounded by a
count that is checked against the remaining bytes, so bad input cannot hang.

Message layouts: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from agent.errors import DecodeError

_I8: Final = struct.Struct(">B")
_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_U32: Final = struct.Struct(">I")
_BEGIN: Final = struct.Struct(">QqI")  # final lsn, commit ts, xid
_COMMIT: Final = struct.Struct(">BQQq")  # flags, commit lsn, end lsn, commit ts
_STREAM_COMMIT: Final = struct.Struct(">IBQQq")  # xid, flags, commit lsn, end lsn, ts
_STREAM_START: Final = struct.Struct(">IB")
_STREAM_ABORT: Final = struct.Struct(">II")
_STREAM_ABORT_EXT: Final = struct.Struct(">IIQq")  # protocol 4 adds abort lsn + ts
_MESSAGE_HEAD: Final = struct.Struct(">BQ")
_U64: Final = struct.Struct(">Q")
_COLUMN_TAIL: Final = struct.Struct(">Ii")  # type oid, typmod
_INSERT_HEAD: Final = struct.Struct(">Ic")
_TRUNCATE_HEAD: Final = struct.Struct(">IB")

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2

REPLICA_IDENTITY_DEFAULT: Final = "d"
REPLICA_IDENTITY_NOTHING: Final = "n"
REPLICA_IDENTITY_FULL: Final = "f"
REPLICA_IDENTITY_INDEX: Final = "i"


class UnchangedToast:
    """The value of a column whose TOASTed datum the update did not change ('u')."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = UnchangedToast()


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column sent in binary format ('b'); only with the `binary` option."""

    data: bytes


# None: SQL NULL; bytes: the type's text output; UNCHANGED_TOAST; BinaryValue.
ColumnValue = bytes | None | UnchangedToast | BinaryValue
TupleData = tuple[ColumnValue, ...]


class MixedTupleData(tuple[ColumnValue, ...]):
    """A TupleData holding UNCHANGED_TOAST or BinaryValue columns.

    A plain `tuple` holds only bytes and None; the row decoder checks the type
    (one comparison) instead of scanning every column for the rare kinds.
    """

    __slots__ = ()


def pg_timestamp(micros: int) -> datetime:
    """A pgoutput timestamp (µs since 2000-01-01 UTC) as an aware UTC datetime."""
    try:
        return PG_EPOCH + timedelta(microseconds=micros)
    except OverflowError as exc:
        raise DecodeError(f"expected a timestamp, found {micros} µs since 2000") from exc


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    xid: int | None  # set inside a stream (protocol 2)
    relid: int
    namespace: str  # "pg_catalog" is sent as ""
    name: str
    replica_identity: str  # one of REPLICA_IDENTITY_*
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfoMessage:
    """'Y': a non-builtin type's name, sent before the first Relation that uses it."""

    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    xid: int | None
    relid: int
    old_kind: str | None  # "K": old key columns, "O": whole old row, None: no old tuple
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relid: int
    old_kind: str  # "K" or "O"
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    xid: int | None
    options: int  # bit set of TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY
    relids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """'M': from pg_logical_emit_message (only with the `messages` option)."""

    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Aborts `subxid`; when `subxid == xid` the whole streamed transaction."""

    xid: int
    subxid: int
    abort_lsn: int | None = None  # protocol 4 (PostgreSQL 16+) only
    abort_ts: datetime | None = None


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfoMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise DecodeError(f"expected a NUL-terminated string at byte {pos}, found none")
    return buf[pos:end].decode("utf-8"), end + 1


def _short_value(length: int, start: int, size: int) -> DecodeError:
    return DecodeError(f"expected a {length}-byte value at byte {start}, found {size - start}")


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    """TupleData: Int16 column count, then per column a kind byte and maybe a value."""
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    if ncols < 0:
        raise DecodeError(f"expected a column count >= 0, found {ncols}")
    size = len(buf)
    values: list[ColumnValue] = []
    append = values.append
    unpack_len = _I32.unpack_from
    mixed = False
    for _ in range(ncols):
        kind = buf[pos]
        if kind == 0x74:  # 't': text
            length = unpack_len(buf, pos + 1)[0]
            start = pos + 5
            pos = start + length
            if length < 0 or pos > size:
                raise _short_value(length, start, size)
            append(buf[start:pos])
        elif kind == 0x6E:  # 'n': null
            pos += 1
            append(None)
        elif kind == 0x75:  # 'u': unchanged TOAST
            pos += 1
            append(UNCHANGED_TOAST)
            mixed = True
        elif kind == 0x62:  # 'b': binary
            mixed = True
            (length,) = unpack_len(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if length < 0 or pos > size:
                raise _short_value(length, start, size)
            append(BinaryValue(buf[start:pos]))
        else:
            raise DecodeError(f"expected a column kind n/u/t/b at byte {pos}, found {kind:#04x}")
    return (MixedTupleData(values) if mixed else tuple(values)), pos


class _Reader:
    """Decodes one message; `xid_prefixed` is true inside a protocol-2 stream."""

    __slots__ = ("buf", "xid_prefixed")

    def __init__(self, buf: bytes, xid_prefixed: bool) -> None:
        self.buf = buf
        self.xid_prefixed = xid_prefixed

    def xid(self, pos: int) -> tuple[int | None, int]:
        if self.xid_prefixed:
            return _U32.unpack_from(self.buf, pos)[0], pos + 4
        return None, pos

    def done(self, pos: int, what: str) -> None:
        if pos != len(self.buf):
            raise DecodeError(
                f"expected {what} to end at byte {pos}, found {len(self.buf) - pos} more bytes"
            )

    def begin(self, pos: int) -> Begin:
        lsn, ts, xid = _BEGIN.unpack_from(self.buf, pos)
        self.done(pos + _BEGIN.size, "Begin")
        return Begin(lsn, pg_timestamp(ts), xid)

    def commit(self, pos: int) -> Commit:
        flags, lsn, end, ts = _COMMIT.unpack_from(self.buf, pos)
        self.done(pos + _COMMIT.size, "Commit")
        return Commit(flags, lsn, end, pg_timestamp(ts))

    def origin(self, pos: int) -> Origin:
        (lsn,) = _U64.unpack_from(self.buf, pos)
        name, pos = _cstring(self.buf, pos + 8)
        self.done(pos, "Origin")
        return Origin(lsn, name)

    def relation(self, pos: int) -> Relation:
        buf = self.buf
        xid, pos = self.xid(pos)
        (relid,) = _U32.unpack_from(buf, pos)
        namespace, pos = _cstring(buf, pos + 4)
        name, pos = _cstring(buf, pos)
        identity = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        if ncols < 0 or ncols * 10 > len(buf) - pos:  # each column takes >= 10 bytes
            raise DecodeError(f"expected a plausible column count, found {ncols}")
        columns = []
        for _ in range(ncols):
            flags = buf[pos]
            colname, pos = _cstring(buf, pos + 1)
            oid, typmod = _COLUMN_TAIL.unpack_from(buf, pos)
            pos += 8
            columns.append(RelationColumn(colname, oid, typmod, bool(flags & 1)))
        self.done(pos, "Relation")
        return Relation(xid, relid, namespace, name, identity, tuple(columns))

    def type_info(self, pos: int) -> TypeInfoMessage:
        xid, pos = self.xid(pos)
        (oid,) = _U32.unpack_from(self.buf, pos)
        namespace, pos = _cstring(self.buf, pos + 4)
        name, pos = _cstring(self.buf, pos)
        self.done(pos, "Type")
        return TypeInfoMessage(xid, oid, namespace, name)

    def insert(self, pos: int) -> Insert:
        xid, pos = self.xid(pos)
        relid, marker = _INSERT_HEAD.unpack_from(self.buf, pos)
        if marker != b"N":
            raise DecodeError(f"expected 'N' before an inserted tuple, found {marker!r}")
        new, pos = _tuple(self.buf, pos + 5)
        self.done(pos, "Insert")
        return Insert(xid, relid, new)

    def update(self, pos: int) -> Update:
        xid, pos = self.xid(pos)
        relid, marker = _INSERT_HEAD.unpack_from(self.buf, pos)
        pos += 5
        old_kind: str | None = None
        old: TupleData | None = None
        if marker in (b"K", b"O"):
            old_kind = marker.decode()
            old, pos = _tuple(self.buf, pos)
            marker = self.buf[pos : pos + 1]
            pos += 1
        if marker != b"N":
            raise DecodeError(f"expected 'N' before an updated tuple, found {marker!r}")
        new, pos = _tuple(self.buf, pos)
        self.done(pos, "Update")
        return Update(xid, relid, old_kind, old, new)

    def delete(self, pos: int) -> Delete:
        xid, pos = self.xid(pos)
        relid, marker = _INSERT_HEAD.unpack_from(self.buf, pos)
        if marker not in (b"K", b"O"):
            raise DecodeError(f"expected 'K' or 'O' before a deleted tuple, found {marker!r}")
        old, pos = _tuple(self.buf, pos + 5)
        self.done(pos, "Delete")
        return Delete(xid, relid, marker.decode(), old)

    def truncate(self, pos: int) -> Truncate:
        xid, pos = self.xid(pos)
        count, options = _TRUNCATE_HEAD.unpack_from(self.buf, pos)
        pos += 5
        if count * 4 != len(self.buf) - pos:
            raise DecodeError(
                f"expected {count} relation ids in Truncate, found {len(self.buf) - pos} bytes"
            )
        relids = struct.unpack_from(f">{count}I", self.buf, pos)
        return Truncate(xid, options, relids)

    def message(self, pos: int) -> LogicalMessage:
        xid, pos = self.xid(pos)
        flags, lsn = _MESSAGE_HEAD.unpack_from(self.buf, pos)
        prefix, pos = _cstring(self.buf, pos + 9)
        (length,) = _I32.unpack_from(self.buf, pos)
        pos += 4
        if length < 0 or pos + length > len(self.buf):
            raise DecodeError(f"expected {length} bytes of message content, found fewer")
        content = self.buf[pos : pos + length]
        self.done(pos + length, "Message")
        return LogicalMessage(xid, bool(flags & 1), lsn, prefix, content)

    def stream_start(self, pos: int) -> StreamStart:
        xid, first = _STREAM_START.unpack_from(self.buf, pos)
        self.done(pos + _STREAM_START.size, "Stream Start")
        return StreamStart(xid, first == 1)

    def stream_commit(self, pos: int) -> StreamCommit:
        xid, flags, lsn, end, ts = _STREAM_COMMIT.unpack_from(self.buf, pos)
        self.done(pos + _STREAM_COMMIT.size, "Stream Commit")
        return StreamCommit(xid, flags, lsn, end, pg_timestamp(ts))

    def stream_abort(self, pos: int) -> StreamAbort:
        if len(self.buf) - pos == _STREAM_ABORT_EXT.size:
            xid, subxid, lsn, ts = _STREAM_ABORT_EXT.unpack_from(self.buf, pos)
            return StreamAbort(xid, subxid, lsn, pg_timestamp(ts))
        xid, subxid = _STREAM_ABORT.unpack_from(self.buf, pos)
        self.done(pos + _STREAM_ABORT.size, "Stream Abort")
        return StreamAbort(xid, subxid)


def decode_message(
    data: bytes | bytearray | memoryview, offset: int = 0, *, in_stream: bool = False
) -> Message:
    """Decode one pgoutput message starting at `offset`.

    `in_stream`: the message sits between Stream Start and Stream Stop, where
    protocol 2 prefixes data messages with the transaction id.
    """
    buf = data if type(data) is bytes else bytes(data)
    if offset:
        buf = buf[offset:]
    if not buf:
        raise DecodeError("expected a pgoutput message, found 0 bytes")
    reader = _Reader(buf, in_stream)
    tag = buf[0]
    try:
        if tag == 0x49:  # 'I'
            return reader.insert(1)
        if tag == 0x55:  # 'U'
            return reader.update(1)
        if tag == 0x44:  # 'D'
            return reader.delete(1)
        if tag == 0x42:  # 'B'
            return reader.begin(1)
        if tag == 0x43:  # 'C'
            return reader.commit(1)
        if tag == 0x52:  # 'R'
            return reader.relation(1)
        if tag == 0x59:  # 'Y'
            return reader.type_info(1)
        if tag == 0x54:  # 'T'
            return reader.truncate(1)
        if tag == 0x4D:  # 'M'
            return reader.message(1)
        if tag == 0x4F:  # 'O'
            return reader.origin(1)
        if tag == 0x53:  # 'S'
            return reader.stream_start(1)
        if tag == 0x45:  # 'E'
            reader.done(1, "Stream Stop")
            return StreamStop()
        if tag == 0x63:  # 'c'
            return reader.stream_commit(1)
        if tag == 0x41:  # 'A'
            return reader.stream_abort(1)
    except (struct.error, IndexError) as exc:
        raise DecodeError(f"truncated pgoutput message {chr(tag)!r}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(f"expected UTF-8 names in pgoutput message {chr(tag)!r}") from exc
    raise DecodeError(f"expected a pgoutput message type, found byte {tag:#04x}")


class PgoutputDecoder:
    """Stateful wrapper that tracks whether messages sit inside a stream.

    Protocol 1 never streams; protocol 2 brackets the chunks of an in-progress
    transaction with Stream Start / Stream Stop, and the data messages between
    them carry the xid.
    """

    __slots__ = ("_in_stream", "proto_version")

    def __init__(self, proto_version: int = 2) -> None:
        if proto_version not in (1, 2):
            raise ValueError(f"pgoutput protocol version 1 or 2 expected, got {proto_version}")
        self.proto_version = proto_version
        self._in_stream = False

    @property
    def in_stream(self) -> bool:
        return self._in_stream

    def decode(self, data: bytes | bytearray | memoryview, offset: int = 0) -> Message:
        msg = decode_message(data, offset, in_stream=self._in_stream)
        if type(msg) is StreamStart:
            if self.proto_version < 2:
                raise DecodeError("expected no Stream Start under protocol 1, found one")
            if self._in_stream:
                raise DecodeError("expected Stream Stop before the next Stream Start, found none")
            self._in_stream = True
        elif type(msg) is StreamStop:
            if not self._in_stream:
                raise DecodeError("expected Stream Stop only inside a stream, found one outside")
            self._in_stream = False
        return msg
