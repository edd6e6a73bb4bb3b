"""PostgresSource: connectors.base.Source over pgoutput logical replication.

Positions are commit LSNs (`Position.extra` carries the commit's end LSN,
where streaming resumes). Only what the pipeline confirms is reported to the
server as `flush_lsn`; when nothing captured is pending, the keepalive's
`wal_end` is confirmed instead, so WAL of uncaptured tables does not pile up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from agent.checkpoint import write_atomically
from agent.errors import PositionLostError, RefusedError, ServiceError, UsageError
from agent.events import (
    Column,
    ForeignKey,
    Heartbeat,
    Index,
    Position,
    Row,
    TableSchema,
    Transaction,
)
from agent.retry import Backoff
from agent.settings import Settings
from connectors.base import CheckResult
from connectors.postgres import checks as pg_checks
from connectors.postgres import slots
from connectors.postgres.assembler import TransactionAssembler, resume_lsn
from connectors.postgres.pgoutput import Relation
from connectors.postgres.pgtypes import TYPE_INFO_QUERY, TypeConverters, TypeInfo
from connectors.postgres.relations import EventBuilder, RelationHistory
from connectors.postgres.replication import (
    KEEPALIVE,
    XLOGDATA,
    ReplicationConnection,
    connection_params,
    lsn_to_int,
    lsn_to_text,
)
from connectors.postgres.snapshot import (
    PRIMARY_KEY_SQL,
    ColumnType,
    PgSnapshotReader,
    open_scheduled_snapshot,
)
from connectors.postgres.spill import clear_spill_dir

log = logging.getLogger(__name__)

_SCHEMAS_FILE = "postgres-schemas.json"
# invalid_authorization_specification, invalid_password, insufficient_privilege
AUTH_SQLSTATES = frozenset({"28000", "28P01", "42501"})
# libpq reports connection-time refusals without a SQLSTATE; these are the
# server's messages for them (stable across PostgreSQL versions).
_REFUSALS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # role or database
    "permission denied for database",
    "must have replication privilege",
)


def is_refusal(exc: BaseException) -> bool:
    if getattr(exc, "sqlstate", None) in AUTH_SQLSTATES:
        return True
    text = str(exc)
    return any(marker in text for marker in _REFUSALS)


_HEARTBEAT_PREFIX = "changevault"
# An idle stream yields a Heartbeat this often: the pipeline confirms (writes
# the checkpoint) only between items, so this bounds how long the checkpoint
# trails the sinks once the source goes quiet.
_IDLE_BEAT_S = 0.25


class PostgresSource:
    connector = "postgres"

    def __init__(
        self,
        settings: Settings,
        state_dir: Path,
        *,
        status_interval: float = 5.0,
        reconnect_deadline: float | None = 300.0,
        spill_memory_budget: int = 4 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self._source = settings.source
        self.database = self._source.database
        self._dsn = self._source.dsn
        self._params = connection_params(self._source)
        self._state_dir = state_dir
        self._status_interval = status_interval
        self._reconnect_deadline = reconnect_deadline
        self._control_lock = threading.Lock()
        self._control_conn: psycopg.Connection[Any] | None = None
        self._repl: ReplicationConnection | None = None
        self._tables: list[slots.TableRef] = []
        self._start_lsn: int | None = None
        # What the server may forget (sent as flush_lsn) and what was confirmed.
        self._flush_lsn = 0
        self._confirmed_end = 0
        self._yielded_end = 0
        self._received_lsn = 0
        self._last_status = 0.0
        self._last_wal_heartbeat = 0.0
        self._heartbeat_failed = False
        self._last_position: Position | None = None
        # Raw stream messages read but not handled yet (_poll returns at a commit).
        self._batch: list[memoryview] = []
        self._batch_at = 0
        # Read once: settings do not change under a running source.
        self._wal_heartbeat_interval = self._source.heartbeat_interval.total_seconds()
        self._unfinished: Iterator[Any] | None = None
        self.reconnects = 0  # counted for metrics; each is logged once
        self.converters = TypeConverters(resolver=self._resolve_type)
        self.history = RelationHistory(self.converters, primary_key=self._primary_key)
        for schema in self._load_schemas():
            self.history.seed(schema)
        self._spill_dir = state_dir / "spill"
        self.assembler = TransactionAssembler(
            self._spill_dir,
            EventBuilder(self.history),
            self._scratch_history,
            self._save_new_schemas,
            spill_memory_budget,
        )

    # ------------------------------------------------------------ control SQL

    def _control(self) -> psycopg.Connection[Any]:
        """A normal autocommit connection for catalog queries and heartbeats."""
        conn = self._control_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            try:
                conn = psycopg.connect(self._dsn, autocommit=True, **self._params)
            except psycopg.OperationalError as exc:
                # Wrong password / no such role / no CONNECT: retrying cannot help.
                refused = is_refusal(exc)
                raise (RefusedError if refused else ServiceError)(
                    f"expected PostgreSQL at {self._source.redacted_dsn}, could not connect: "
                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
                ) from None
            self._control_conn = conn
        return conn

    def _query(self, query: Any, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._control_lock:
            return self._control().execute(query, params).fetchall()

    def xmin_age(self, xmin: int) -> int | None:
        """How many transactions a snapshot's held xmin is behind (for the metric)."""
        rows = self._query("SELECT age(%s::text::xid)::int8", (str(xmin),))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def _resolve_type(self, oid: int) -> TypeInfo | None:
        rows = self._query(TYPE_INFO_QUERY, (oid,))
        if not rows:
            return None
        oid_, name, typtype, base, elem = rows[0]
        return TypeInfo(int(oid_), name, typtype, int(base or 0), int(elem or 0))

    def _primary_key(self, rel: Relation) -> tuple[str, ...] | None:
        rows = self._query(PRIMARY_KEY_SQL, (rel.relid,))
        return tuple(r[0] for r in rows) or None

    # ---------------------------------------------------------------- schemas

    def _scratch_history(self) -> RelationHistory:
        scratch = RelationHistory(self.converters, primary_key=self._primary_key)
        for schema in self.history.schemas():
            scratch.seed(schema)
        return scratch

    def _load_schemas(self) -> list[TableSchema]:
        path = self._state_dir / _SCHEMAS_FILE
        if not path.exists():
            return []
        out = []
        for doc in json.loads(path.read_text()):
            out.append(
                TableSchema(
                    schema=doc["schema"],
                    table=doc["table"],
                    columns=tuple(Column(**c) for c in doc["columns"]),
                    primary_key=tuple(doc["primary_key"]),
                    version=doc["version"],
                    foreign_keys=tuple(
                        ForeignKey(**{**f, "columns": tuple(f["columns"]),
                                      "ref_columns": tuple(f["ref_columns"])})
                        for f in doc["foreign_keys"]
                    ),
                    indexes=tuple(
                        Index(i["name"], tuple(i["columns"]), i["unique"]) for i in doc["indexes"]
                    ),
                )
            )  # fmt: skip
        return out

    def _save_new_schemas(self, _new: list[TableSchema]) -> None:
        """Keep the newest version per table so a restart goes on numbering."""
        self._state_dir.mkdir(parents=True, exist_ok=True)
        # Atomic, and a full or read-only state_dir is a ServiceError (the
        # agent retries) rather than an unexpected OSError that ends it.
        doc = json.dumps([asdict(s) for s in self.history.schemas()])
        write_atomically(self._state_dir / _SCHEMAS_FILE, doc.encode())

    def convert_text_row(
        self, table: TableSchema, columns: Sequence[ColumnType], values: Sequence[str | None]
    ) -> Row:
        """Snapshot text values through the streaming path's converters."""
        row: Row = {}
        for (name, oid, _typmod), value in zip(columns, values, strict=True):
            row[name] = None if value is None else self.converters.for_oid(oid)(value.encode())
        return row

    # ------------------------------------------------------------------ setup

    def checks(self) -> list[CheckResult]:
        return pg_checks.run_checks(self.settings, self._state_dir)

    def _prepare_tables(self) -> list[slots.TableRef]:
        """Refuse unsafe tables, make sure the publication exists, list what it sends."""
        conn = self._control()
        with self._control_lock:
            names = self._source.tables
            configured = slots.resolve_tables(conn, names) if names is not None else None
            candidates = configured if configured is not None else slots.user_tables(conn)
            slots.refuse_unsafe(conn, candidates, all_tables=configured is None)
            pub = self._source.publication
            slots.ensure_publication(conn, pub, configured, self._state_dir)
            published = slots.publication_tables(conn, pub)
            slots.refuse_unsafe(conn, published, all_tables=False)
            if configured is not None:
                wanted = {t.relid for t in configured}
                published = [t for t in published if t.relid in wanted]
            return published

    def start(self, resume_from: Position | None) -> PgSnapshotReader | None:
        self._tables = self._prepare_tables()
        clear_spill_dir(self._spill_dir)
        slot = self._source.slot
        if resume_from is not None:
            with self._control_lock:
                slots.require_resumable_slot(self._control(), slot, self.database, resume_from.text)
            lsn = resume_lsn(resume_from)
            self._start_lsn = self._flush_lsn = self._confirmed_end = lsn
            self._yielded_end = lsn
            self._last_position = resume_from
            return None
        with self._control_lock:
            existing = slots.slot_info(self._control(), slot)
        if existing is not None:
            raise UsageError(
                f"expected no replication slot {slot} on a first run (no checkpoint in "
                f"{self._state_dir}), found one: run `changevault teardown --yes` or choose "
                f"another source.slot"
            )
        self._repl = ReplicationConnection(self._dsn, self._params)
        created = self._repl.create_slot(slot, export_snapshot=True)
        slots.record_created(self._state_dir, slot=slot)
        log.info("created replication slot %s at %s", slot, lsn_to_text(created.consistent_point))
        reader = PgSnapshotReader(
            self._dsn, self._params, created, self._tables, self.convert_text_row
        )
        for schema in reader.tables():
            self.history.seed(schema)
        self._start_lsn = self._flush_lsn = self._confirmed_end = created.consistent_point
        self._last_position = reader.position
        return reader

    def take_snapshot(self) -> PgSnapshotReader:
        return open_scheduled_snapshot(self._dsn, self._params, self._tables, self.convert_text_row)

    @property
    def tables(self) -> list[slots.TableRef]:
        return list(self._tables)

    # -------------------------------------------------------------- streaming

    def stream(self) -> Iterator[Transaction | Heartbeat]:
        if self._start_lsn is None:
            raise UsageError("PostgresSource.stream() called before start()")
        while True:
            self._finish_unfinished()
            if self._repl is None or not self._repl.streaming:
                yield from self._connect()
            try:
                item = self._poll()
            except psycopg.OperationalError as exc:
                self._connection_lost(exc)
                continue
            if isinstance(item, Transaction):
                self._unfinished = item.events
            yield item

    def _finish_unfinished(self) -> None:
        """A transaction's events must be consumed before the next is read
        (its Relation messages update the history); drain what was skipped."""
        if self._unfinished is not None:
            for _ in self._unfinished:
                pass
            self._unfinished = None

    def _connection_lost(self, exc: BaseException) -> None:
        self.reconnects += 1
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning(
            "replication connection lost (%s); reconnecting from %s",
            reason,
            lsn_to_text(self._flush_lsn),
        )
        self._drop_repl()

    def _drop_repl(self) -> None:
        self._batch, self._batch_at = [], 0
        self.assembler.reset()
        self.assembler.skip_through = self._yielded_end
        if self._repl is not None:
            with contextlib.suppress(Exception):
                self._repl.close()
            self._repl = None

    def _connect(self) -> Iterator[Heartbeat]:
        """(Re)start streaming with backoff and jitter; Heartbeats while waiting."""
        backoff = Backoff(initial=0.5, maximum=10.0)
        started = time.monotonic()
        while True:
            try:
                self._open_stream()
                return
            except PositionLostError:
                raise
            except (psycopg.OperationalError, ServiceError, psycopg.errors.ObjectInUse) as exc:
                self._drop_repl()
                waited = time.monotonic() - started
                if self._reconnect_deadline is not None and waited > self._reconnect_deadline:
                    raise ServiceError(
                        f"expected to reach the walsender at {self._source.redacted_dsn}, "
                        f"failed for {waited:.0f}s: {str(exc).strip().splitlines()[-1:]}"
                    ) from None
                log.debug("replication connect failed: %s", exc)
                until = time.monotonic() + backoff.next_delay()
                while (left := until - time.monotonic()) > 0:
                    time.sleep(min(left, 1.0))
                    yield self._heartbeat()

    def _open_stream(self) -> None:
        if self._repl is None:
            self._repl = ReplicationConnection(self._dsn, self._params)
        start = max(self._flush_lsn, self._start_lsn or 0)
        try:
            self._repl.start(self._source.slot, start, [self._source.publication])
        except psycopg.errors.UndefinedObject:
            raise PositionLostError(
                f"expected replication slot {self._source.slot} (position {lsn_to_text(start)}), "
                f"found no such slot: it was dropped or did not follow a failover; take a new "
                f"snapshot (docs/postgresql.md, 'Re-snapshot')"
            ) from None
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            raise PositionLostError(
                f"expected replication slot {self._source.slot} to still hold WAL from "
                f"{lsn_to_text(start)}, found it unusable: {str(exc).strip()}; take a new "
                f"snapshot (docs/postgresql.md, 'Re-snapshot')"
            ) from None
        self._last_status = time.monotonic()

    def _poll(self) -> Transaction | Heartbeat:
        """Read until a transaction commits, or at most _IDLE_BEAT_S (then a Heartbeat).

        Messages come from libpq in batches (read_batch); between batches the
        clock is read once for status updates, heartbeats and the deadline.
        """
        repl = self._repl
        assert repl is not None
        feed = self.assembler.feed
        deadline = time.monotonic() + _IDLE_BEAT_S
        batch, i = self._batch, self._batch_at
        while True:
            if i >= len(batch):
                if batch and batch[-1][0] == 0x77:  # the batch's last XLogData start
                    start = XLOGDATA.unpack_from(batch[-1], 1)[0]
                    self._received_lsn = max(self._received_lsn, start)
                now = time.monotonic()
                if now - self._last_status >= self._status_interval:
                    self._send_status()
                if now - self._last_wal_heartbeat >= self._wal_heartbeat_interval:
                    self._emit_wal_heartbeat(now)
                left = deadline - now
                if left <= 0:
                    self._batch, self._batch_at = [], 0
                    return self._heartbeat()
                batch, i = repl.read_batch(min(left, self._status_interval)), 0
                self._batch = batch
                continue
            data = batch[i]
            i += 1
            if data[0] == 0x77:  # 'w': XLogData; the payload is copied once, here
                item = feed(bytes(data[25:]))
                if item is None:
                    continue
                self._batch_at = i
                start, wal_end, _ts = XLOGDATA.unpack_from(data, 1)
                self._received_lsn = max(self._received_lsn, start)
                if isinstance(item, Transaction):
                    self._yielded_end = resume_lsn(item.position)
                    self._last_position = item.position
                    return item
                # a non-transactional logical message
                beat = self._wal_advanced(max(wal_end, item.lsn))
                if beat is not None:
                    return beat
                continue
            if data[0] != 0x6B:  # 'k'
                raise ServiceError(
                    f"walsender sent an unexpected message type {bytes(data[:1])!r}; "
                    "expected 'w' or 'k'"
                )
            wal_end, _ts, reply = KEEPALIVE.unpack_from(data, 1)
            self._received_lsn = max(self._received_lsn, wal_end)
            self._batch_at = i
            beat = self._wal_advanced(wal_end)
            if reply:
                self._send_status()
            if beat is not None:
                return beat

    def _wal_advanced(self, wal_end: int) -> Heartbeat | None:
        """WAL moved on with nothing captured half-received: say so, and when every
        yielded transaction is confirmed, let the server forget it."""
        if self.assembler.open or wal_end <= self._yielded_end:
            return None
        if self._confirmed_end >= self._yielded_end:
            self._flush_lsn = max(self._flush_lsn, wal_end)
        last = self._last_position
        if last is not None and last.sort_key[0] >= wal_end:
            return None
        self._last_position = Position(lsn_to_text(wal_end), (wal_end,))
        return Heartbeat(self._last_position, datetime.now(UTC))

    def _heartbeat(self) -> Heartbeat:
        position = self._last_position
        if position is None:
            lsn = self._start_lsn or 0
            position = Position(lsn_to_text(lsn), (lsn,))
        return Heartbeat(position, datetime.now(UTC))

    def _send_status(self) -> None:
        if self._repl is None:
            return
        flush = self._flush_lsn
        self._repl.send_status(max(self._received_lsn, flush), flush, flush)
        self._last_status = time.monotonic()

    def _emit_wal_heartbeat(self, now: float) -> None:
        """A tiny WAL record so the slot advances while captured tables are idle."""
        self._last_wal_heartbeat = now
        try:
            self._query(
                sql.SQL("SELECT pg_logical_emit_message(false, {}, {})::text").format(
                    sql.Literal(_HEARTBEAT_PREFIX), sql.Literal("heartbeat")
                )
            )
            self._heartbeat_failed = False
        except (psycopg.Error, ServiceError) as exc:
            if not self._heartbeat_failed:
                log.warning("could not emit a WAL heartbeat: %s", str(exc).strip())
            self._heartbeat_failed = True

    def confirm(self, position: Position) -> None:
        lsn = resume_lsn(position)
        self._confirmed_end = max(self._confirmed_end, lsn)
        self._flush_lsn = max(self._flush_lsn, lsn)

    @property
    def flush_lsn(self) -> int:
        return self._flush_lsn

    # ------------------------------------------------------------------ other

    def behind_bytes(self) -> int | None:
        try:
            rows = self._query(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (self._source.slot,),
            )
        except (psycopg.Error, ServiceError):
            return None
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def close(self) -> None:
        if self._repl is not None and self._repl.streaming:
            with contextlib.suppress(Exception):
                self._send_status()
        self._drop_repl()
        with self._control_lock:
            if self._control_conn is not None:
                self._control_conn.close()
                self._control_conn = None


def slot_lsn(position: Position) -> str:
    """The LSN text a position resumes from (for status output)."""
    return lsn_to_text(resume_lsn(position))


__all__ = ["PostgresSource", "lsn_to_int", "slot_lsn"]
