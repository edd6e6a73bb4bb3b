"""One replication connection's binlog as Transactions and Heartbeats.

mysql-replication's BinLogStreamReader opens the connection, registers as a
replica and sends the dump command (GTID for MariaDB with `is_mariadb=True`,
COM_BINLOG_DUMP_GTID for MySQL, file/offset with `is_mariadb=False` — with
`is_mariadb=True` a saved file/offset is ignored). We then read the raw event
packets ourselves: the library's own reconnect would restart from its original
`auto_position` (replaying forever under a large backlog), and its per-row
object model is slow. This reader never reconnects; the source does, from the
last durable checkpoint.
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import RotateEvent

from agent.errors import DecodeError, UncapturableChange
from agent.events import ChangeEvent, Heartbeat, Position, TableSchema, Transaction
from connectors.mysql import binlog_events as ev
from connectors.mysql.gtid import (
    GtidState,
    MariaDBGtid,
    MariaDBGtidList,
    MySQLGtidSet,
    parse_gtid_state,
)
from connectors.mysql.row_decoder import Row, RowDecoder, parse_rows_header
from connectors.mysql.schema_history import TABLE_NAME, SchemaHistory, split_table_name
from connectors.mysql.spool import EventSpool
from connectors.mysql.table_map import TableMap, parse_table_id, parse_table_map
from connectors.mysql.types import codec_for_charset

log = logging.getLogger(__name__)

_DML = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(insert|update|delete|replace|load\s+data)\b",
                  re.IGNORECASE | re.DOTALL)
_HEARTBEAT_EVERY = 1.0
# What parsing corrupt event bytes raises (struct/int/str/date conversions, recursion in
# nested JSON); turned into DecodeError naming the event's position.
MALFORMED_EVENT_ERRORS = (
    IndexError, KeyError, ValueError, OverflowError, struct.error, RecursionError,
)


@dataclass(slots=True)
class SourceCounters:
    """Counts the source exposes for metrics (wired in by the metrics module)."""

    reconnects: int = 0
    statement_dml_rejected: int = 0
    positions_lost: int = 0
    transactions: int = 0
    row_events: int = 0


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    conn_kwargs: dict[str, Any]
    server_id: int
    mariadb: bool
    captured: Callable[[str, str], bool]
    charsets: dict[int, str]  # collation id -> character set
    spill_dir: Path | None = None


def make_position(gtid: GtidState, file: str, offset: int) -> Position:
    text = str(gtid) if gtid else f"{file}:{offset}"
    return Position(
        text=text,
        sort_key=(ev.binlog_file_number(file), offset),
        extra=(("gtid", str(gtid)), ("file", file), ("offset", str(offset))),
    )


def empty_state(mariadb: bool) -> GtidState:
    return MariaDBGtidList() if mariadb else MySQLGtidSet()


def state_of(position: Position, mariadb: bool) -> GtidState:
    text = position.get("gtid")
    if text is None:
        text = "" if ":" in position.text and not mariadb else position.text
        if re.match(r"^[^:]+:\d+$", text):  # file:offset
            text = ""
    return parse_gtid_state(text) if text.strip() else empty_state(mariadb)


@dataclass(slots=True)
class _Tx:
    txid: str
    timestamp: int
    commit_us: int | None
    began: bool = False  # a BEGIN query opened it (else a single statement is the transaction)
    spool: EventSpool = field(default_factory=EventSpool)
    schemas: list[TableSchema] = field(default_factory=list)
    gtid: MariaDBGtid | tuple[str, int] | None = None


@dataclass(slots=True)
class _MappedTable:
    table_map: TableMap
    decoder: RowDecoder
    schema: TableSchema


class BinlogReader:
    def __init__(self, config: ReaderConfig, history: SchemaHistory,
                 counters: SourceCounters) -> None:
        self.config = config
        self.history = history
        self.counters = counters
        self._codec_cache: dict[int | None, str | None] = {}
        self._map_cache: dict[bytes, _MappedTable] = {}

    def _codec(self, collation: int | None) -> str | None:
        if collation not in self._codec_cache:
            charset = self.config.charsets.get(collation or 63, "binary")
            self._codec_cache[collation] = codec_for_charset(charset)
        return self._codec_cache[collation]

    def open_stream(self, start: Position, blocking: bool) -> tuple[BinLogStreamReader, str]:
        """Connects and sends the dump command; returns the stream and the first file name."""
        cfg = self.config
        gtid = state_of(start, cfg.mariadb)
        settings = dict(cfg.conn_kwargs, read_timeout=30)
        settings.pop("autocommit", None)
        common: dict[str, Any] = dict(
            connection_settings=settings, server_id=cfg.server_id, blocking=blocking,
            only_events=[RotateEvent], slave_heartbeat=_HEARTBEAT_EVERY, enable_logging=False)
        if gtid:
            stream = BinLogStreamReader(auto_position=str(gtid), is_mariadb=cfg.mariadb, **common)
        else:
            stream = BinLogStreamReader(
                log_file=start.get("file"), log_pos=int(start.get("offset") or 4),
                resume_stream=True, is_mariadb=False, **common)
        first = stream.fetchone()  # the server's fake ROTATE naming the file it starts in
        if first is None:
            stream.close()
            return stream, start.get("file") or ""
        return stream, str(first.next_binlog)

    def read(self, start: Position, blocking: bool = True,
             stop_at: Callable[[Position], bool] | None = None
             ) -> Iterator[Transaction | Heartbeat]:
        """Transactions after `start` until the connection ends (or `stop_at` says so)."""
        stream, file = self.open_stream(start, blocking)
        try:
            yield from self._events(stream, start, file, stop_at)
        finally:
            stream.close()

    def _events(self, stream: BinLogStreamReader, start: Position, file: str,
                stop_at: Callable[[Position], bool] | None
                ) -> Iterator[Transaction | Heartbeat]:
        cfg = self.config
        read_packet = stream._stream_connection._read_packet
        checksum = 4 if _checksum_enabled(stream) else 0
        gtid = state_of(start, cfg.mariadb)
        offset = int(start.get("offset") or 4)
        position = make_position(gtid, file, offset)
        tables: dict[int, _MappedTable | None] = {}
        tx: _Tx | None = None
        last_heartbeat = time.monotonic()
        captured = cfg.captured
        while True:
            data = read_packet().get_all_data()
            try:
                if data[0] == 0xFE and len(data) < 9:
                    return  # EOF: the end of the binlog without `blocking`
                h_ts, h_type, h_server, _, h_logpos, _ = ev.HEADER.unpack_from(data, 1)
                body = data[20 : len(data) - checksum]
                if h_type in ev.ROW_EVENTS:
                    if tx is None:
                        continue
                    entry = tables.get(parse_table_id(body))
                    if entry is not None:
                        self._rows(tx, entry, h_type, body)
                    continue
                if h_type == ev.TABLE_MAP:
                    tables[parse_table_id(body)] = self._table_map(body, tx, position)
                elif h_type == ev.MARIADB_GTID:
                    g = ev.parse_mariadb_gtid(body)
                    mg = MariaDBGtid(g.domain, h_server, g.seq)
                    tx = _Tx(str(mg), h_ts, None, spool=EventSpool(cfg.spill_dir), gtid=mg)
                elif h_type == ev.GTID:
                    g2 = ev.parse_mysql_gtid(body)
                    tx = _Tx(f"{g2.uuid}:{g2.gno}", h_ts, g2.commit_us,
                             spool=EventSpool(cfg.spill_dir), gtid=(g2.uuid, g2.gno))
                elif h_type == ev.XID:
                    if tx is not None:
                        gtid, position, item = self._commit(tx, gtid, file, h_logpos, h_ts)
                        tx = None
                        if item is not None:
                            yield item
                            last_heartbeat = time.monotonic()
                        elif time.monotonic() - last_heartbeat >= _HEARTBEAT_EVERY:
                            yield Heartbeat(position, datetime.now(UTC))
                            last_heartbeat = time.monotonic()
                        if stop_at is not None and stop_at(position):
                            return
                elif h_type == ev.QUERY:
                    q = ev.parse_query(body)
                    sql = q.sql.strip()
                    upper = sql[:8].upper()
                    if upper.startswith("BEGIN") or upper.startswith("XA START"):
                        if tx is not None:
                            tx.began = True
                        continue
                    if tx is None:
                        continue
                    ends = upper.startswith(("COMMIT", "ROLLBACK")) or not tx.began
                    if not upper.startswith(("COMMIT", "ROLLBACK")):
                        self._query(tx, q, position, captured)
                    if ends:
                        gtid, position, item = self._commit(tx, gtid, file, h_logpos, h_ts)
                        tx = None
                        if item is not None:
                            yield item
                            last_heartbeat = time.monotonic()
                        if stop_at is not None and stop_at(position):
                            return
                elif h_type == ev.ROTATE:
                    rot = ev.parse_rotate(body)
                    file = rot.next_file
                    # Table ids are not persistent: a rotate may mean a server restart.
                    tables.clear()
                elif h_type == ev.HEARTBEAT:
                    if tx is None:
                        yield Heartbeat(position, datetime.now(UTC))
                        last_heartbeat = time.monotonic()
                elif (h_type in ev.MARIADB_COMPRESSED_ROWS
                      or h_type == ev.PARTIAL_UPDATE_ROWS) and (
                        tx is not None and tables.get(parse_table_id(body)) is not None):
                    raise UncapturableChange(
                        f"expected plain row events, found event type {h_type} "
                        f"(log_bin_compress / partial JSON updates) at {file}:{h_logpos}")
            except MALFORMED_EVENT_ERRORS as exc:
                # A corrupt or truncated event must stop us with a clear error,
                # never be skipped (that would lose a change) nor crash the process.
                raise DecodeError(
                    f"expected a well-formed binlog event near {file}:{offset_of(data)}, found "
                    f"{type(exc).__name__}: {str(exc)[:200]}") from exc

    def _table_map(self, body: bytes, tx: _Tx | None, position: Position) -> _MappedTable | None:
        # Cheap name check first: most table maps in a busy binlog are not ours.
        slen = body[8]
        schema = body[9 : 9 + slen].decode("utf-8")
        tlen = body[10 + slen]
        table = body[11 + slen : 11 + slen + tlen].decode("utf-8")
        if not self.config.captured(schema, table):
            return None
        key = body[6:]  # the table id is not part of the shape
        cached = self._map_cache.get(key)
        if cached is None:
            table_map = parse_table_map(body, self.config.mariadb)
            version, _ = self.history.resolve(table_map, position.sort_key, self.config.charsets)
            decoder = RowDecoder(table_map, self._codec, version.json_columns)
            cached = _MappedTable(table_map, decoder, version.schema)
            if len(self._map_cache) > 4096:
                self._map_cache.clear()
            self._map_cache[key] = cached
        if tx is not None and cached.schema not in tx.schemas:
            latest = self.history.latest(cached.schema.qualified)
            if latest is not None and latest.schema is cached.schema and latest.since >= (
                    position.sort_key):
                tx.schemas.append(cached.schema)
        return cached

    def _rows(self, tx: _Tx, entry: _MappedTable, h_type: int, body: bytes) -> None:
        op = ev.ROW_OP[h_type]
        is_update = op == "u"
        v2 = h_type >= ev.WRITE_ROWS_V2
        _, present, present2, pos = parse_rows_header(body, v2, is_update)
        schema = entry.schema
        sname, tname, version = schema.schema, schema.table, schema.version
        pk = schema.primary_key
        spool = tx.spool
        before: Row | None
        after: Row | None
        for old, new in entry.decoder.rows(body, pos, len(body), present, present2):
            if op == "d":
                before, after, keyrow = new, None, new
            else:
                before, after, keyrow = old, new, new
            key = {k: keyrow[k] for k in pk} if pk else None
            spool.append(ChangeEvent(op, sname, tname, spool.count, key,
                                     before, after, version))

    def _query(self, tx: _Tx, q: ev.Query, position: Position,
               captured: Callable[[str, str], bool]) -> None:
        ddl = self.history.record_ddl(q.sql, q.database, position.text)
        if ddl is not None:
            if ddl.kind == "truncate":
                db, table = ddl.tables[0]
                if captured(db, table):
                    latest = self.history.latest(f"{db}.{table}")
                    tx.spool.append(ChangeEvent("t", db, table, tx.spool.count, None, None, None,
                                                latest.schema.version if latest else 1))
            # A table's id maps to a new shape after DDL; the next TABLE_MAP says which.
            self._map_cache.clear()
            return
        if _DML.match(q.sql) and self._mentions_captured(q):
            self.counters.statement_dml_rejected += 1
            raise UncapturableChange(
                f"expected row-format changes for captured tables, found a statement-format "
                f"DML event after {position.text} (a session set binlog_format=STATEMENT/MIXED): "
                f"{q.sql[:120]!r}")

    def _mentions_captured(self, q: ev.Query) -> bool:
        for m in re.finditer(TABLE_NAME, q.sql):
            db, table = split_table_name(m.groups(), q.database)
            if self.config.captured(db, table):
                return True
        return False

    def _commit(self, tx: _Tx, gtid: GtidState, file: str, log_pos: int, ts: int
                ) -> tuple[GtidState, Position, Transaction | None]:
        if isinstance(tx.gtid, MariaDBGtid) and isinstance(gtid, MariaDBGtidList):
            gtid = gtid.with_gtid(tx.gtid)
        elif isinstance(tx.gtid, tuple) and isinstance(gtid, MySQLGtidSet):
            gtid = gtid.with_gtid(*tx.gtid)
        position = make_position(gtid, file, log_pos)
        if not tx.spool.count:
            return gtid, position, None
        if tx.commit_us is not None:
            commit_ts = datetime.fromtimestamp(tx.commit_us / 1e6, UTC)
        else:
            # MariaDB records whole seconds: the time the COMMIT (or the DDL) began.
            commit_ts = datetime.fromtimestamp(ts, UTC)
        self.counters.transactions += 1
        self.counters.row_events += tx.spool.count
        return gtid, position, Transaction(position=position, txid=tx.txid, commit_ts=commit_ts,
                                           events=iter(tx.spool), schemas=tx.schemas)


def offset_of(packet: bytes) -> str:
    """The binlog offset an event packet starts at, as far as its header says."""
    if len(packet) < 1 + ev.HEADER_SIZE:
        return "?"
    return str(ev.parse_header(packet[1:]).offset)


def _checksum_enabled(stream: BinLogStreamReader) -> bool:
    # The library told the server to send events with @@global.binlog_checksum.
    with stream._ctl_connection.cursor() as cur:
        cur.execute("SELECT @@global.binlog_checksum")
        row = cur.fetchone()
    value = next(iter(row.values())) if isinstance(row, dict) else (row[0] if row else None)
    return bool(value) and str(value).upper() not in ("NONE", "0")
