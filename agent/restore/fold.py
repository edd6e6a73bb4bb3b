"""Replay: the snapshot's rows, then every transaction up to the target, folded per key.

The fold lives in an on-disk SQLite database (a temporary file), keyed by
(table, canonical primary-key JSON) with the row as value, so memory stays
bounded whatever the table sizes. Rows are stored marshalled, not as JSON
text: they hold only JSON types, never leave this process, and marshal
writes and reads them several times faster. A transaction is applied whole or
not at all: replay decides to stop only between transactions.
"""

from __future__ import annotations

import logging
import marshal
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import fastjson
from agent.archive.catalog import CatalogEntry
from agent.archive.reader import ArchiveReader, snapshot_envelopes
from agent.errors import UsageError
from agent.events import Position, TableSchema
from agent.restore.planner import Plan
from agent.restore.shapes import KeyChange, Shapes, TableShape
from agent.restore.target import Target

log = logging.getLogger(__name__)

_BATCH = 20_000  # rows per executemany for snapshot rows; events per SQLite commit


def key_json(values: list[Any]) -> str:
    """The canonical text of a primary key: the fold's, the entity candidates' and
    in-place compare's keys must be spelled alike (floats!), so all use this."""
    return fastjson.dumps_raw(values).decode("utf-8")


@dataclass
class Stop:
    """Where replay stopped: the last transaction applied (or the snapshot)."""

    position: Position
    commit_ts: str
    txid: str | None  # None: nothing after the snapshot was applied
    transactions: int = 0
    events: int = 0
    next_txid: str | None = None  # the first transaction left out, if any was seen


@dataclass
class FoldStats:
    skipped_tables: set[str] = field(default_factory=set)


_DELETED = None  # a pending delete in FoldStore's write-back cache


class FoldStore:
    """(table, key) -> row JSON in SQLite; journal off (a crashed fold is thrown away).

    Writes go through a bounded write-back cache (key -> row, or a pending
    delete) flushed with executemany: one SQL statement per change event
    would cost more than the rest of the fold together.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="changevault-restore-", dir=directory)
        self.db = sqlite3.connect(Path(self._dir.name) / "fold.sqlite", isolation_level=None)
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "temp_store=FILE",
            "cache_size=-131072",  # 128 MiB of page cache, then the OS page cache
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE rows (t INTEGER NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL,"
            " PRIMARY KEY (t, k)) WITHOUT ROWID"
        )
        self._ids: dict[str, int] = {}
        self._pending: dict[tuple[int, str], bytes | None] = {}
        self.db.execute("BEGIN")

    def table_id(self, name: str) -> int:
        tid = self._ids.get(name)
        if tid is None:
            tid = self._ids[name] = len(self._ids) + 1
        return tid

    def flush(self) -> None:
        if not self._pending:
            return
        puts = [(t, k, v) for (t, k), v in self._pending.items() if v is not _DELETED]
        dels = [(t, k) for (t, k), v in self._pending.items() if v is _DELETED]
        self._pending.clear()
        if dels:
            self.db.executemany("DELETE FROM rows WHERE t = ? AND k = ?", dels)
        if puts:
            self.db.executemany("INSERT OR REPLACE INTO rows (t, k, v) VALUES (?, ?, ?)", puts)

    def commit(self) -> None:
        self.flush()
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def put_many(self, tid: int, items: list[tuple[str, bytes]]) -> None:
        self.flush()
        self.db.executemany(
            "INSERT OR REPLACE INTO rows (t, k, v) VALUES (?, ?, ?)",
            [(tid, k, v) for k, v in items],
        )

    def put(self, tid: int, key: str, row: bytes) -> None:
        self._pending[(tid, key)] = row
        if len(self._pending) >= _BATCH:
            self.flush()

    def get(self, tid: int, key: str) -> dict[str, Any] | None:
        if (tid, key) in self._pending:
            pending = self._pending[(tid, key)]
            return None if pending is _DELETED else _load_row(pending)
        got = self.db.execute("SELECT v FROM rows WHERE t = ? AND k = ?", (tid, key)).fetchone()
        return None if got is None else _load_row(got[0])

    def delete(self, tid: int, key: str) -> None:
        self._pending[(tid, key)] = _DELETED
        if len(self._pending) >= _BATCH:
            self.flush()

    def truncate(self, tid: int) -> None:
        self.flush()
        self.db.execute("DELETE FROM rows WHERE t = ?", (tid,))

    def count(self, tid: int) -> int:
        self.flush()
        return int(self.db.execute("SELECT count(*) FROM rows WHERE t = ?", (tid,)).fetchone()[0])

    def rows(self, tid: int) -> Iterator[dict[str, Any]]:
        self.flush()
        cur = self.db.execute("SELECT v FROM rows WHERE t = ?", (tid,))
        while batch := cur.fetchmany(_BATCH):
            for (v,) in batch:
                yield _load_row(v)

    def rekey(self, tid: int, shape: TableShape) -> None:
        """A key redefined between snapshot and target: recompute every key of the table."""
        names = [shape.names_of(c) for c in shape.key]
        self.flush()
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS rekey (k TEXT PRIMARY KEY, v BLOB)")
        self.db.execute("DELETE FROM rekey")
        for row in self.rows(tid):
            values = [_pick(row, n) for n in names]
            if any(v is _MISSING for v in values):
                raise UsageError(
                    f"{shape.name}: the primary key was redefined to ({', '.join(shape.key)}) "
                    "between the snapshot and the target, and rows from before lack those "
                    "columns; choose a target before the change or after a later snapshot"
                )
            self.db.execute(
                "INSERT OR REPLACE INTO rekey VALUES (?, ?)", (key_json(values), _row_bytes(row))
            )
        self.truncate(tid)
        self.db.execute("INSERT INTO rows (t, k, v) SELECT ?, k, v FROM rekey", (tid,))
        self.db.execute("DELETE FROM rekey")

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


_MISSING = object()


def _row_bytes(row: dict[str, Any]) -> bytes:
    return marshal.dumps(row)


def _load_row(data: bytes) -> dict[str, Any]:
    # Only ever bytes this process wrote into its own private temporary file.
    row: dict[str, Any] = marshal.loads(data)  # noqa: S302
    return row


def _pick(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in row:
            return row[n]
    return _MISSING


class Fold:
    """Applies envelopes to a FoldStore under the current table shapes."""

    def __init__(
        self, store: FoldStore, shapes: Shapes, wanted: set[str] | None, exact_json: bool = False
    ) -> None:
        self.store = store
        self.shapes = shapes
        self.wanted = wanted
        self.stats = FoldStats()
        # PostgreSQL archives: json/jsonb values are kept as their exact JSON text
        # (bytes), the form the applier reads them back in (see _JsonColumns).
        self.json_columns = _JsonColumns() if exact_json else None
        # Entity restore: table -> the primary keys (key_json) that may be
        # members; other rows' changes cannot matter and are not folded. A
        # table missing from the map (its key was redefined) is folded whole.
        self.only_keys: dict[str, set[str]] | None = None

    def in_scope(self, name: str) -> bool:
        return self.wanted is None or name in self.wanted

    def load_snapshot(
        self, reader: ArchiveReader, plan: Plan, parts: list[CatalogEntry] | None = None
    ) -> int:
        """Fold the snapshot's rows (`parts`: only these snapshot parts)."""
        rows = 0
        pending: dict[int, list[tuple[str, bytes]]] = {}
        tables = None if self.wanted is None else set(self.wanted)
        for env in snapshot_envelopes(reader, plan.snapshot, tables, parts):
            doc = fastjson.loads(env)
            src = doc["source"]
            shape = self.shapes.get(f"{src['schema']}.{src['table']}")
            if shape is None:
                continue
            after = doc["after"]
            if self.json_columns is not None:
                self.json_columns.to_raw(shape, after, env)
            key = key_json([after.get(c) for c in shape.key])
            only = None if self.only_keys is None else self.only_keys.get(shape.name)
            if only is not None and key not in only:
                continue
            tid = self.store.table_id(shape.name)
            batch = pending.setdefault(tid, [])
            batch.append((key, _row_bytes(after)))
            rows += 1
            if len(batch) >= _BATCH:
                self.store.put_many(tid, batch)
                batch.clear()
        for tid, batch in pending.items():
            self.store.put_many(tid, batch)
        self.store.commit()
        return rows

    def schema_change(self, record: TableSchema) -> None:
        change: KeyChange | None = self.shapes.apply(record)
        if change is not None and self.in_scope(change.table):
            if self.only_keys is not None:
                # Candidate keys are in the old layout: fold every row from here on.
                self.only_keys.pop(change.table, None)
            shape = self.shapes.by_name[change.table]
            log.info(
                "%s: key redefined from %s to %s; re-keying", change.table, change.old, change.new
            )
            self.store.rekey(self.store.table_id(change.table), shape)

    def event(self, env: bytes) -> None:
        doc = fastjson.loads(env)
        src = doc["source"]
        name = f"{src['schema']}.{src['table']}"
        if not self.in_scope(name):
            return
        shape = self.shapes.get(name)
        if shape is None:
            self.stats.skipped_tables.add(name)
            return
        tid = self.store.table_id(name)
        op = doc["op"]
        if op == "t":
            self.store.truncate(tid)
            return
        key = shape.key
        only = None if self.only_keys is None else self.only_keys.get(name)
        if op == "d":
            field = "key" if doc["key"] else "before"
            old_key = self._old_key(shape, doc[field] or {}, env, field)
            if only is None or old_key in only:
                self.store.delete(tid, old_key)
            return
        after: dict[str, Any] = doc["after"]
        if self.json_columns is not None:
            self.json_columns.to_raw(shape, after, env)
        new_key = key_json([after.get(c) for c in key])
        old_key = new_key
        if op == "u":
            before = doc["before"] or {}
            if all(c in before for c in key):
                old_key = self._old_key(shape, before, env, "before")
        if only is not None and old_key not in only and new_key not in only:
            return
        if op == "u":
            unchanged = doc.get("unchanged") or ()
            if unchanged:
                prev = self.store.get(tid, old_key) or {}
                for column in unchanged:
                    after[column] = _value_of(prev, shape.names_of(column))
            if old_key != new_key:
                self.store.delete(tid, old_key)
        self.store.put(tid, new_key, _row_bytes(after))

    def _old_key(self, shape: TableShape, row: dict[str, Any], env: bytes, field: str) -> str:
        """The key of the row the log names (its `key` or `before` image), spelled as
        the fold stores keys: json key columns as their exact text, like `after`'s."""
        if self.json_columns is not None and self.json_columns.in_key(shape):
            row = {c: row.get(c) for c in shape.key}
            self.json_columns.to_raw(shape, row, env, field)
        return key_json([row.get(c) for c in shape.key])


class _JsonColumns:
    """json/jsonb columns' values -> their exact JSON text (bytes), arrays element-wise.

    The envelope parser (orjson) reads every non-integer number as a float,
    which would turn a jsonb `1.50` into `1.5`; a value holding one is taken
    from an exact parse of the envelope instead (rare, and only then paid).
    """

    def __init__(self) -> None:
        # table -> (the shape's schema it was made for, its json columns, any in the key)
        self._cache: dict[str, tuple[TableSchema, list[tuple[tuple[str, ...], bool]], bool]] = {}

    def _columns(self, shape: TableShape) -> tuple[list[tuple[tuple[str, ...], bool]], bool]:
        got = self._cache.get(shape.name)
        if got is None or got[0] is not shape.schema:
            columns = [
                (shape.names_of(c.name), array)
                for c in shape.schema.columns
                if (array := fastjson.json_column(c.type_name)) is not None
            ]
            keyed = any(n in shape.key for names, _array in columns for n in names)
            got = self._cache[shape.name] = (shape.schema, columns, keyed)
        return got[1], got[2]

    def in_key(self, shape: TableShape) -> bool:
        return self._columns(shape)[1]

    def to_raw(
        self, shape: TableShape, row: dict[str, Any], env: bytes, field: str = "after"
    ) -> None:
        """Convert `row`, the envelope's `field` (after, before or key), in place."""
        exact: dict[str, Any] | None = None
        for names, array in self._columns(shape)[0]:
            for name in names:
                value = row.get(name)
                if value is None:
                    continue
                if fastjson.holds_float(value):
                    if exact is None:
                        exact = fastjson.loads_exact(env)[field]
                    value = exact[name]
                row[name] = fastjson.raw(value, array)


def _value_of(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    value = _pick(row, names)
    return None if value is _MISSING else value


def replay(
    reader: ArchiveReader, plan: Plan, target: Target, fold: Fold, sparse: bool = False
) -> Stop:
    """Apply every transaction after the snapshot that the target admits, in commit order.

    `sparse`: the plan's segments skip some (an entity restore), see
    ArchiveReader.transactions.
    """
    snap = plan.snapshot
    stop = Stop(snap.position, snap.started, None)
    start = snap.position.sort_key
    since_commit = 0
    for tx in reader.transactions(plan.segments, sparse=sparse):
        if tx.position.sort_key <= start:
            continue  # inside the snapshot (read again from the segment before the first)
        if not target.admits(tx.position, datetime.fromisoformat(tx.commit_ts)):
            stop.next_txid = tx.txid
            break
        for record in tx.schemas:
            fold.schema_change(record)
        for env in tx.events:
            fold.event(env)
            stop.events += 1
            since_commit += 1
        stop.position, stop.commit_ts, stop.txid = tx.position, tx.commit_ts, tx.txid
        stop.transactions += 1
        if since_commit >= _BATCH:
            fold.store.commit()
            since_commit = 0
    fold.store.commit()
    return stop
