"""MySQLSource: the MySQL/MariaDB implementation of connectors.base.Source."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql

from agent.errors import PositionLostError, ServiceError, UncapturableChange, UsageError
from agent.events import Heartbeat, Position, Transaction
from agent.settings import Settings, parse_table_name
from connectors.base import CheckResult
from connectors.mysql import checks as server_checks
from connectors.mysql.binlog_reader import (
    BinlogReader,
    ReaderConfig,
    SourceCounters,
)
from connectors.mysql.connection import collation_charsets, connect, connect_kwargs, is_mariadb
from connectors.mysql.schema_history import SchemaHistory
from connectors.mysql.snapshot import MySQLSnapshot

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Conn = pymysql.connections.Connection[Any]
_POSITION_LOST = 1236  # ER_MASTER_FATAL_ERROR_READING_BINLOG: purged / unknown position


class MySQLSource:
    connector = "mysql"

    def __init__(self, settings: Settings, state_dir: Path, *,
                 sleep: Callable[[float], None] = time.sleep,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0) -> None:
        self._source = settings.source
        self.database = self._source.database
        self._kwargs = connect_kwargs(self._source)
        self._state_dir = state_dir
        self.history = SchemaHistory(state_dir)
        self.counters = SourceCounters()
        self._sleep = sleep
        self._backoff = (backoff_initial, backoff_max)
        self._tables = self._parse_tables(self._source.tables)
        self._mariadb: bool | None = None
        self._charsets: dict[int, str] = {}
        self._start: Position | None = None
        self._confirmed: Position | None = None

    # ------------------------------------------------------------------ setup

    def _parse_tables(self, names: list[str] | None) -> frozenset[tuple[str, str]] | None:
        if names is None:
            return None
        out = set()
        for name in names:
            db, table = parse_table_name(name)  # validated by the settings already
            out.add((db or self.database, table))
        return frozenset(out)

    def captured(self, database: str, table: str) -> bool:
        if self._tables is None:
            return database == self.database
        return (database, table) in self._tables

    def _connect(self, what: str) -> Conn:
        conn = connect(self._kwargs, what)
        if self._mariadb is None:
            self._mariadb = is_mariadb(conn)
            self._charsets = collation_charsets(conn)
        return conn

    @property
    def mariadb(self) -> bool:
        if self._mariadb is None:
            self._connect("server facts").close()
        assert self._mariadb is not None
        return self._mariadb

    def _table_names(self, conn: Conn) -> list[tuple[str, str]]:
        """Captured tables; without `tables`, every base table with a primary key."""
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            if self._tables is not None:
                return sorted(self._tables)
            cur.execute(
                "SELECT t.TABLE_NAME FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA=%s "
                "AND t.TABLE_TYPE='BASE TABLE' AND EXISTS (SELECT 1 FROM "
                "information_schema.STATISTICS s WHERE s.TABLE_SCHEMA=t.TABLE_SCHEMA AND "
                "s.TABLE_NAME=t.TABLE_NAME AND s.INDEX_NAME='PRIMARY') ORDER BY 1",
                (self.database,))
            return [(self.database, _s(r[0])) for r in cur.fetchall()]

    def _tables_without_pk(self, conn: Conn) -> list[str]:
        if self._tables is None:
            return []
        missing = []
        with conn.cursor() as cur:
            for db, table in sorted(self._tables):
                cur.execute("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE "
                            "TABLE_SCHEMA=%s AND TABLE_NAME=%s AND INDEX_NAME='PRIMARY'",
                            (db, table))
                row = cur.fetchone()
                if not row or not int(row[0]):
                    missing.append(f"{db}.{table}")
        return missing

    # ----------------------------------------------------------------- Source

    def checks(self) -> list[CheckResult]:
        try:
            conn = self._connect("check")
        except ServiceError as exc:
            return [CheckResult("mysql connection", False, str(exc))]
        with conn:
            ok = CheckResult("mysql connection", True, f"connected to {self._source.redacted_dsn}")
            return [ok,
                    *server_checks.source_checks(conn, self.mariadb, self._confirmed or self._start,
                                                 self._tables_without_pk(conn))]

    def start(self, resume_from: Position | None) -> MySQLSnapshot | None:
        with self._connect("start") as conn:
            missing = self._tables_without_pk(conn)
            if missing:
                raise UsageError(
                    f"source.tables: expected a primary key on every captured table, found none "
                    f"on {', '.join(missing)}")
            if resume_from is None:
                snapshot = self.take_snapshot()
                self._start = snapshot.position
                return snapshot
            reason = server_checks.missing_reason(conn, resume_from, self.mariadb)
        if reason is not None:
            self.counters.positions_lost += 1
            raise PositionLostError(f"binlog position {resume_from.text} is no longer on the "
                                    f"server: {reason}")
        self._start = resume_from
        return None

    def take_snapshot(self) -> MySQLSnapshot:
        return MySQLSnapshot(self._kwargs, self.mariadb, self._table_names, self.history)

    def reader(self) -> BinlogReader:
        """A reader for one connection (also used by bench/mysql_decode.py)."""
        config = ReaderConfig(self._kwargs, self._source.server_id, self.mariadb, self.captured,
                              self._charsets, spill_dir=self._state_dir)
        return BinlogReader(config, self.history, self.counters)

    def stream(self) -> Iterator[Transaction | Heartbeat]:
        """Transactions from the start position; owns the reconnect loop.

        On a lost connection it reconnects from the last confirmed (durable)
        position, so unconfirmed transactions may be delivered again
        (at-least-once); each reconnect is logged once and counted.
        """
        if self._start is None:
            raise UsageError("MySQLSource.stream() called before start()")
        delay = 0.0
        while True:
            resume = self._confirmed or self._start
            try:
                for item in self.reader().read(resume, blocking=True):
                    delay = 0.0
                    yield item
                raise ServiceError("the binlog stream ended unexpectedly")  # blocking never ends
            except (pymysql.err.MySQLError, OSError, ServiceError) as exc:
                if isinstance(exc, PositionLostError | UncapturableChange):
                    raise
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                if code == _POSITION_LOST:
                    self.counters.positions_lost += 1
                    raise PositionLostError(
                        f"binlog position {resume.text} is no longer on the server: "
                        f"{exc.args[-1]}") from None
                self.counters.reconnects += 1
                lo, hi = self._backoff
                delay = min(hi, max(lo, delay * 2))
                wait = delay * (1 + random.random() * 0.5)  # jitter: replicas don't stampede
                log.warning("binlog connection lost (%s); reconnect #%d from %s in %.1fs",
                            _brief(exc), self.counters.reconnects, resume.text, wait)
                self._sleep(wait)

    def confirm(self, position: Position) -> None:
        self._confirmed = position

    def behind_bytes(self) -> int | None:
        try:
            with self._connect("lag") as conn:
                return server_checks.behind_bytes(conn, self._confirmed or self._start)
        except (ServiceError, pymysql.err.MySQLError):
            return None

    def retention_headroom_bytes(self) -> int | None:
        """Binlog bytes the server may still purge before it reaches our position (metric)."""
        try:
            with self._connect("retention") as conn:
                return server_checks.retention_headroom_bytes(conn, self._confirmed or self._start)
        except (ServiceError, pymysql.err.MySQLError):
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.history.save()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _brief(exc: BaseException) -> str:
    return str(exc.args[-1]) if exc.args else type(exc).__name__
