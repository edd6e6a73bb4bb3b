"""Parsing of the binlog events we act on, straight from the packet bytes.

We read raw events from the replication connection instead of letting
mysql-replication build Python objects for every event: the stock path costs
most of its time in per-event and per-row object construction. Only the few
event types below are parsed; everything else is skipped by its type byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.events import Op

# Event type codes (MySQL binlog_event.h, MariaDB log_event.h).
QUERY = 2
STOP = 3
ROTATE = 4
FORMAT_DESCRIPTION = 15
XID = 16
TABLE_MAP = 19
WRITE_ROWS_V1 = 23
UPDATE_ROWS_V1 = 24
DELETE_ROWS_V1 = 25
HEARTBEAT = 27
WRITE_ROWS_V2 = 30
UPDATE_ROWS_V2 = 31
DELETE_ROWS_V2 = 32
GTID = 33
PARTIAL_UPDATE_ROWS = 39
MARIADB_GTID = 162
MARIADB_GTID_LIST = 163
MARIADB_QUERY_COMPRESSED = 165
MARIADB_COMPRESSED_ROWS = frozenset({166, 167, 168, 169, 170, 171})

ROW_EVENTS = frozenset(
    {WRITE_ROWS_V1, UPDATE_ROWS_V1, DELETE_ROWS_V1, WRITE_ROWS_V2, UPDATE_ROWS_V2, DELETE_ROWS_V2}
)
ROW_OP: dict[int, Op] = {
    WRITE_ROWS_V1: "c", WRITE_ROWS_V2: "c",
    UPDATE_ROWS_V1: "u", UPDATE_ROWS_V2: "u",
    DELETE_ROWS_V1: "d", DELETE_ROWS_V2: "d",
}

# MariaDB GTID event flags (log_event.h, Gtid_log_event::FL_*).
FL_STANDALONE = 1
FL_GROUP_COMMIT_ID = 2

HEADER = struct.Struct("<IBIIIH")  # timestamp, type, server_id, event_size, log_pos, flags
HEADER_SIZE = 19


@dataclass(frozen=True, slots=True)
class EventHeader:
    timestamp: int
    type: int
    server_id: int
    size: int
    log_pos: int  # offset of the NEXT event in the binlog file (0 for fake events)

    @property
    def offset(self) -> int:
        return self.log_pos - self.size if self.log_pos else 0


def parse_header(buf: bytes) -> EventHeader:
    ts, typ, sid, size, log_pos, _ = HEADER.unpack_from(buf, 0)
    return EventHeader(ts, typ, sid, size, log_pos)


def read_lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    """A MySQL length-encoded integer at `pos`: (value, next position)."""
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        return buf[pos + 1] | buf[pos + 2] << 8, pos + 3
    if first == 0xFD:
        return int.from_bytes(buf[pos + 1 : pos + 4], "little"), pos + 4
    return int.from_bytes(buf[pos + 1 : pos + 9], "little"), pos + 9


@dataclass(frozen=True, slots=True)
class Rotate:
    next_file: str
    position: int


def parse_rotate(body: bytes) -> Rotate:
    (position,) = struct.unpack_from("<Q", body, 0)
    return Rotate(body[8:].decode("utf-8"), position)


@dataclass(frozen=True, slots=True)
class MariaDBGtidEvent:
    domain: int
    seq: int
    flags: int

    @property
    def standalone(self) -> bool:
        """No XID/COMMIT follows: the transaction is this one (DDL) statement."""
        return bool(self.flags & FL_STANDALONE)


def parse_mariadb_gtid(body: bytes) -> MariaDBGtidEvent:
    seq, domain, flags = struct.unpack_from("<QIB", body, 0)
    return MariaDBGtidEvent(domain, seq, flags)


@dataclass(frozen=True, slots=True)
class MySQLGtidEvent:
    uuid: str
    gno: int
    commit_us: int | None  # immediate_commit_timestamp, microseconds since the epoch


def parse_mysql_gtid(body: bytes) -> MySQLGtidEvent:
    raw = body[1:17].hex()
    uuid = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    (gno,) = struct.unpack_from("<q", body, 17)
    commit_us: int | None = None
    # flags(1) sid(16) gno(8) lt_type(1) last_committed(8) sequence_number(8)
    # then immediate_commit_timestamp (7 bytes; MySQL >= 8.0.1).
    if len(body) >= 49:
        value = int.from_bytes(body[42:49], "little")
        commit_us = value & ~(1 << 55)
    return MySQLGtidEvent(uuid, gno, commit_us)


@dataclass(frozen=True, slots=True)
class Query:
    database: str
    sql: str


def parse_query(body: bytes) -> Query:
    db_len = body[8]
    (status_len,) = struct.unpack_from("<H", body, 11)
    start = 13 + status_len
    database = body[start : start + db_len].decode("utf-8", "replace")
    sql = body[start + db_len + 1 :].decode("utf-8", "replace")
    return Query(database, sql)


def parse_mariadb_gtid_list(body: bytes) -> list[tuple[int, int, int]]:
    """(domain, server, seq) of every entry of a Gtid_list event."""
    (count,) = struct.unpack_from("<I", body, 0)
    count &= 0x0FFFFFFF  # the top bits are flags
    return [struct.unpack_from("<IIQ", body, 4 + 16 * i) for i in range(count)]


def binlog_file_number(name: str) -> int:
    """`mysql-bin.000042` -> 42: binlog files sort by this suffix."""
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0
