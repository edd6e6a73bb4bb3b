"""The archive sink: transactions into sealed segments plus catalog entries.

A segment closes when its plaintext passes `segment_max_bytes` or its first
record is `segment_max_age` old (a change reaches the archive within that
time), always at a record boundary; a transaction may continue into the next
segment. A transaction is durable here once the segment holding its end
record and that segment's catalog entry exist.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.archive import catalog
from agent.archive.records import SchemaRecord, TxBeginRecord, TxEndRecord
from agent.archive.segment import SegmentBuilder, seal_object
from agent.archive.writer import ArchiveWriter
from agent.checkpoint import position_to_json
from agent.crypto.datakeys import DataKey, DataKeyManager
from agent.crypto.keyhash import KeyHasher
from agent.envelope import format_ts
from agent.events import Position
from connectors.base import EncodedEvent, SinkItem, TxBegin, TxEnd

log = logging.getLogger(__name__)

INDEX_HASH_BYTES = 8  # truncated keyed hashes: false positives only cost a read
# Index objects are sealed in small chunks so an entity restore can range-read
# the few chunks where a hash would sit instead of the whole index.
INDEX_CHUNK_BYTES = 1024


@dataclass
class _Open:
    builder: SegmentBuilder = field(default_factory=SegmentBuilder)
    opened: float = field(default_factory=time.monotonic)
    after: Position | None = None  # last complete position before this segment
    # The transaction already open when this segment began (its begin record is
    # in an earlier segment): lets a reader start here without the neighbour.
    continues: TxBegin | None = None
    first_position: Position | None = None
    last_end: TxEnd | None = None
    last_txid: str | None = None
    first_commit: str | None = None
    tx_ends: int = 0
    events: int = 0
    tables: set[str] = field(default_factory=set)
    index: set[bytes] = field(default_factory=set)
    truncate: bool = False
    schema_change: bool = False


class ArchiveSink:
    name = "archive"

    def __init__(
        self,
        writer: ArchiveWriter,
        data_keys: DataKeyManager,
        hasher: KeyHasher,
        link_columns: Mapping[str, Sequence[str]],
        max_bytes: int,
        max_age: float,
        resume_after: Position | None,
        on_segment: Callable[[int], None] | None = None,
        checkpoint: Callable[[], Position | None] | None = None,
    ) -> None:
        self.writer = writer
        self.data_keys = data_keys
        self.hasher = hasher
        # "schema.table" -> columns whose values name an entity (FKs, entity_links)
        self.link_columns = link_columns
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._ack: Callable[[int], None] = lambda i: None
        self._seg: _Open | None = None
        self._last_complete: Position | None = resume_after
        self._open_tx: TxBegin | None = None
        self._on_segment = on_segment
        # The pipeline's durable position, recorded with each segment so a
        # new host (empty state_dir) resumes where every sink already was.
        self._checkpoint = checkpoint or (lambda: None)

    def open(self, ack: Callable[[int], None]) -> None:
        # The writer (lease, catalog tail) is opened by the app before the
        # initial snapshot; the sink only starts appending to it.
        self._ack = ack

    def _segment(self) -> _Open:
        if self._seg is None:
            self._seg = _Open(after=self._last_complete, continues=self._open_tx)
        return self._seg

    def accept(self, item: SinkItem) -> None:
        seg = self._segment()
        if isinstance(item, EncodedEvent):
            seg.builder.add_event(item.envelope)
            seg.events += 1
            self._index(seg, item)
        elif isinstance(item, TxBegin):
            if seg.first_position is None:
                seg.first_position = item.position
            for schema in item.schemas:
                seg.builder.add(SchemaRecord(schema))
                seg.schema_change = True
            seg.builder.add(TxBeginRecord(item.position, item.txid, item.commit_ts))
            self._open_tx = item
        elif isinstance(item, TxEnd):
            seg.builder.add(TxEndRecord(item.position, sum(item.event_counts.values())))
            seg.last_end = item
            seg.tx_ends += 1
            if seg.first_commit is None:
                seg.first_commit = format_ts(item.commit_ts)
            self._last_complete = item.position
            seg.last_txid = self._open_tx.txid if self._open_tx is not None else None
            self._open_tx = None
        if seg.builder.raw_bytes >= self.max_bytes:
            self._close_segment()

    def _index(self, seg: _Open, item: EncodedEvent) -> None:
        ev = item.event
        table = f"{ev.schema}.{ev.table}"
        seg.tables.add(table)
        if ev.op == "t":
            seg.truncate = True
            return
        if ev.key:
            key = item.row_key  # the pipeline's, shared with the Kafka sink
            if key is None:
                key = self.hasher.row_key(ev.schema, ev.table, ev.key)
            seg.index.add(key[:INDEX_HASH_BYTES])
            old = _old_key(ev.key, ev.before) if ev.op == "u" else None
            if old is not None:  # a key-changing update: findable under its old key too
                seg.index.add(self.hasher.row_key(ev.schema, ev.table, old)[:INDEX_HASH_BYTES])
        for column in self.link_columns.get(table, ()):
            for row in (ev.before, ev.after):
                if row is not None and row.get(column) is not None:
                    h = self.hasher.column_value(ev.schema, ev.table, column, row[column])
                    seg.index.add(h[:INDEX_HASH_BYTES])

    def tick(self) -> None:
        now = time.monotonic()
        self.writer.maybe_renew_lease()
        if self._seg is not None and now - self._seg.opened >= self.max_age:
            self._close_segment()

    def flush(self, timeout: float) -> None:
        if self._seg is not None:
            self._close_segment()

    def close(self) -> None:
        pass  # the writer (and its lease) belongs to the app

    def _close_segment(self) -> None:
        seg, self._seg = self._seg, None
        if seg is None or seg.builder.records == 0:
            return
        key = self.writer.object_key("segments", ".seg")
        archive_id = self.writer.archive_id
        data_key = self.data_keys.current()
        blob = seal_object(data_key, archive_id, key, {"kind": "segment"}, [seg.builder.finish()])
        index_key, index_blob = seal_index(data_key, archive_id, key, seg.index)
        self.writer.store.create(key, blob)
        self.writer.store.create(index_key, index_blob)
        body: dict[str, Any] = {
            "object": key,
            "digest": _sha256(blob),
            "size": len(blob),
            "index_object": index_key,
            "index_digest": _sha256(index_blob),
            "index_size": len(index_blob),
            "after": position_to_json(seg.after) if seg.after else None,
            "first_position": position_to_json(seg.first_position) if seg.first_position else None,
            "last_position": position_to_json(seg.last_end.position) if seg.last_end else None,
            "first_commit_ts": seg.first_commit,
            "last_commit_ts": format_ts(seg.last_end.commit_ts) if seg.last_end else None,
            "last_txid": seg.last_txid,
            "tx_ends": seg.tx_ends,
            "continues": _continues_json(seg.continues),
            "events": seg.events,
            "raw_bytes": seg.builder.raw_bytes,
            "tables": sorted(seg.tables),
            "truncate": seg.truncate,
            "schema_change": seg.schema_change,
            "checkpoint": position_to_json(cp) if (cp := self._checkpoint()) else None,
            # Which columns' values the index covers, so an entity restore may
            # skip a segment whose index lacks a member's link value.
            "link_columns": {t: list(cols) for t, cols in self.link_columns.items()},
            # The index names a key-changing update under its old key as well
            # (older segments do not: an entity restore reads them whole).
            "old_keys_indexed": True,
        }
        self.writer.append(catalog.SEGMENT, body)
        if self._on_segment is not None:
            self._on_segment(len(blob) + len(index_blob))
        if seg.last_end is not None:
            self._ack(seg.last_end.index)


def _old_key(key: Mapping[str, Any], before: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An update's previous primary key, when its before image shows it changed."""
    if before is None or not all(c in before for c in key):
        return None
    old = {c: before[c] for c in key}
    return None if old == dict(key) else old


def seal_index(
    data_key: DataKey, archive_id: str, data_object: str, entries: set[bytes]
) -> tuple[str, bytes]:
    """The index object of a segment or snapshot part: its key and sealed bytes
    (sorted truncated hashes, in small chunks for range reads)."""
    index_key = data_object[: -len(".seg")] + ".idx"
    blob = seal_object(
        data_key,
        archive_id,
        index_key,
        {"kind": "index"},
        [b"".join(sorted(entries))],
        chunk_size=INDEX_CHUNK_BYTES,
    )
    return index_key, blob


def _continues_json(begin: TxBegin | None) -> dict[str, Any] | None:
    if begin is None:
        return None
    return {
        "position": position_to_json(begin.position),
        "txid": begin.txid,
        "commit_ts": begin.commit_ts.isoformat(),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
