"""The small protocols through which `agent/` talks to the outside world.

A new database is one folder under `connectors/` implementing `Source` (and
`Applier` for restore); a new store implements `ObjectStore`. Nothing here
imports a driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent.events import ChangeEvent, Heartbeat, Position, Row, TableSchema, Transaction


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of `changevault check`."""

    name: str
    ok: bool
    detail: str
    # A failed check that makes `run` refuse to start (exit 2 or 3).
    fatal: bool = True
    # The failure is a service unreachable or refusing us (exit 3, not 2).
    service: bool = False


# --------------------------------------------------------------------- sources


class SnapshotReader(Protocol):
    """A consistent read of the captured tables at exactly `position`."""

    position: Position
    snapshot_id: str
    started_at: datetime

    def tables(self) -> list[TableSchema]: ...

    def rows(self, table: TableSchema) -> Iterator[Row]:
        """Rows of one table in bounded memory (server-side cursor / COPY)."""
        ...

    def close(self) -> None: ...


class Source(Protocol):
    connector: str  # "postgres" | "mysql"
    database: str

    def checks(self) -> list[CheckResult]: ...

    def start(self, resume_from: Position | None) -> SnapshotReader | None:
        """Prepare to stream.

        Without a resume position (first run) create what is needed (slot,
        publication) and return the snapshot that must be copied before
        streaming. With one, make sure the source still has it, else raise
        `PositionLostError`; return None.
        """
        ...

    def stream(self) -> Iterator[Transaction | Heartbeat]:
        """Committed transactions in commit order, from the start position.

        Yields a `Heartbeat` at least once a second while idle so the caller
        can check its stop flag; reconnects on its own (logged and counted),
        resuming from the last confirmed position.
        """
        ...

    def confirm(self, position: Position) -> None:
        """Everything up to and including `position` is durable in every sink."""
        ...

    def take_snapshot(self) -> SnapshotReader:
        """A new consistent snapshot while streaming continues (scheduled snapshots)."""
        ...

    def behind_bytes(self) -> int | None:
        """Log bytes the source retains for us (slot lag / binlog), if known."""
        ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------- sinks


@dataclass(frozen=True, slots=True)
class TxBegin:
    index: int  # the pipeline's gap-free transaction counter
    position: Position
    txid: str
    commit_ts: datetime
    schemas: tuple[TableSchema, ...] = ()
    snapshot_id: str | None = None


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    index: int  # transaction index
    id: str
    event: ChangeEvent
    envelope: bytes  # the CONTRACT.md JSON envelope, UTF-8, not yet sealed
    # KeyHasher.row_key(schema, table, key or {}) of a row change, computed once
    # for every sink (Kafka message key, archive index); None for a truncate,
    # or when the producer of the item left it to the sinks.
    row_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class TxEnd:
    index: int
    position: Position
    commit_ts: datetime
    event_counts: dict[str, int] = field(default_factory=dict)  # "schema.table" -> events


SinkItem = TxBegin | EncodedEvent | TxEnd


class Sink(Protocol):
    """Receives every item in order; reports durability through `ack`.

    `accept` may block (that is the backpressure). `ack(index)` is called,
    from any thread, once transaction `index` and everything before it is
    durable in this sink. `tick` is called at least once a second so
    time-bounded batches close while the source is idle.
    """

    name: str

    def open(self, ack: Callable[[int], None]) -> None: ...

    def accept(self, item: SinkItem) -> None: ...

    def tick(self) -> None: ...

    def flush(self, timeout: float) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------- storage


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int


class ObjectExists(Exception):
    """A create-only put found the key already taken."""


class ObjectStore(Protocol):
    """Immutable objects by key. The agent's credentials only ever create."""

    url: str

    def create(self, key: str, data: bytes) -> None:
        """Store `data` under a new key; raise ObjectExists if taken.

        Atomic: readers see the whole object or nothing. A retry after an
        ambiguous failure that finds identical bytes already there succeeds.
        """
        ...

    def create_from_file(self, key: str, path: Path) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None:
        """Only `changevault expire` (with its own credentials) deletes."""
        ...


# -------------------------------------------------------------------- restore

# Rows of one table as lists of CONTRACT.md JSON values, in the table's column order.
RestoreRows = Callable[[TableSchema], Iterator[list[object]]]


@dataclass(frozen=True, slots=True)
class RowMatch:
    """Rows whose `columns` equal one of `values` (JSON values, one list per row)."""

    columns: tuple[str, ...]
    values: list[list[Any]]


@dataclass
class RowChanges:
    """What an in-place restore writes into one table, by primary key."""

    inserts: list[list[Any]] = field(default_factory=list)
    updates: list[tuple[list[Any], list[Any]]] = field(default_factory=list)  # (current, wanted)
    deletes: list[list[Any]] = field(default_factory=list)  # current rows


class Applier(Protocol):
    """Writes restored tables into a target database (restore's only I/O there).

    Values are the JSON values of CONTRACT.md; the applier converts them to
    the database's types and, when reading back, converts the target's values
    to the same JSON representation, so checksums compare exactly.
    """

    def load_new(
        self, target_schema: str, tables: list[TableSchema], rows: RestoreRows, foreign_keys: bool
    ) -> dict[str, int]:
        """In one transaction: create the schema and tables (columns, types, NOT NULL,
        defaults), load rows, then primary keys, indexes, the tables' own sequences
        set past the restored maximum and, if asked, foreign keys between the
        restored tables. Refuses (UsageError) a target table that holds rows.
        Returns rows loaded per "schema.table" of the source."""
        ...

    def read_back(self, target_schema: str, table: TableSchema) -> Iterator[list[object]]:
        """Every row of the restored table, as JSON values in column order."""
        ...

    # --- preview and in place: one transaction, begun and finished by the caller.

    def table_exists(self, target_schema: str, table: str) -> bool: ...

    def begin(self) -> None: ...

    def finish(self, commit: bool) -> None: ...

    def select_rows(
        self, target_schema: str, table: TableSchema, match: RowMatch | None, lock: bool
    ) -> list[list[Any]]:
        """Rows whose match columns equal one of the tuples (None: every row), compared
        as typed values on the server; `lock`: FOR UPDATE."""
        ...

    def triggers(self, target_schema: str, table: str) -> list[str]:
        """User triggers that would fire on writes to the table."""
        ...

    def cascade_outside(
        self,
        target_schema: str,
        table: TableSchema,
        deleted: list[list[Any]],
        scope: dict[str, tuple[TableSchema, list[list[Any]]]],
    ) -> str | None:
        """Describes rows outside `scope` (table name -> definition, keys in scope) that
        deleting `deleted` would reach through ON DELETE CASCADE / SET NULL / SET
        DEFAULT; None when there are none."""
        ...

    def apply_rows(self, target_schema: str, table: TableSchema, changes: RowChanges) -> None:
        """Inserts, updates (only differing columns) and deletes, by primary key; a
        constraint violation is a UsageError."""
        ...

    def close(self) -> None: ...
