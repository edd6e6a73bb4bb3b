"""The source-independent change model.

Sources yield `Transaction`s; a transaction's events are produced lazily (a
large transaction is replayed from a spill file, never held in memory), so a
consumer must finish iterating one transaction before asking for the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Op = Literal["c", "u", "d", "t", "r"]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Position:
    """A point in the source's log.

    `text` is the operator-facing form (`0/16B3748`, a GTID set, `file:offset`);
    `sort_key` orders positions of one source (PostgreSQL: the LSN; MySQL: the
    binlog file number and offset), and `extra` carries what a source needs to
    resume (MySQL: the GTID set and file:offset together).

    A snapshot's position follows one rule for every source: a transaction is
    in the snapshot iff its sort_key is <= the snapshot's, after it iff greater.
    """

    text: str
    sort_key: tuple[int, ...]
    extra: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.text

    def get(self, name: str) -> str | None:
        return dict(self.extra).get(name)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_name: str  # the source's type as DDL would spell it, e.g. "numeric(12,2)", "bigint"
    nullable: bool = True
    default: str | None = None  # the default expression, as the source prints it


@dataclass(frozen=True, slots=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str = "NO ACTION"


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A table's shape at one schema version.

    `version` increases whenever the source reports a new shape for the table;
    every event names the version it was decoded with.
    """

    schema: str
    table: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    version: int = 1
    foreign_keys: tuple[ForeignKey, ...] = ()
    indexes: tuple[Index, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    op: Op
    schema: str
    table: str
    seq: int  # numbers the events of one transaction, from 0
    key: Row | None
    before: Row | None
    after: Row | None
    schema_version: int = 1
    unchanged: tuple[str, ...] = ()


@dataclass(slots=True)
class Transaction:
    """One committed source transaction.

    `events` is an iterator consumed exactly once, in order. `schemas` holds
    every table shape first used by this transaction (new tables, DDL), so
    sinks can record the schema history beside the data.
    """

    position: Position
    txid: str
    commit_ts: datetime  # timezone-aware UTC
    events: Iterator[ChangeEvent]
    schemas: list[TableSchema] = field(default_factory=list)
    # A snapshot's rows arrive as one pseudo-transaction per table chunk with
    # op "r"; `snapshot_id` ties them to the snapshot's start/end records.
    snapshot_id: str | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The source is alive and has nothing captured up to `position`.

    Lets the checkpoint advance past WAL of uncaptured tables when no captured
    transaction is pending.
    """

    position: Position
    ts: datetime


def event_id(connector: str, database: str, position: Position, seq: int) -> str:
    """The stable id of CONTRACT.md: the same on every redelivery."""
    return f"{connector}:{database}:{position.text}:{seq}"
