"""Writing a base snapshot into the archive (never to Kafka).

A snapshot is bracketed by catalog entries: `snapshot_begin` (id, position,
every table's definition), one `snapshot_part` per sealed object of `r`
events, and `snapshot_end` (row counts). Each part has a sealed index like a
segment's (keyed hashes of its rows' keys and link-column values), so an
entity restore reads only the parts holding the entity's rows. Restore uses only snapshots that
have their end entry, so an interrupted snapshot is never half-used; the
next attempt starts a new one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.archive import catalog
from agent.archive.records import EventRecord, SchemaRecord, schema_to_json
from agent.archive.segment import SegmentBuilder, seal_object
from agent.archive.sink import INDEX_HASH_BYTES, seal_index
from agent.archive.writer import ArchiveWriter
from agent.checkpoint import position_to_json
from agent.crypto.datakeys import DataKeyManager
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder, format_ts
from agent.events import ChangeEvent, TableSchema
from connectors.base import SnapshotReader

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    snapshot_id: str
    rows: dict[str, int]
    bytes: int


class SnapshotWriter:
    def __init__(
        self,
        writer: ArchiveWriter,
        data_keys: DataKeyManager,
        encoder: EnvelopeEncoder,
        max_bytes: int,
        should_stop: Callable[[], bool] = lambda: False,
        hasher: KeyHasher | None = None,
        link_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.writer = writer
        self.hasher = hasher  # None: parts without an index (entity restore reads them all)
        self.link_columns = link_columns or {}
        self.data_keys = data_keys
        self.encoder = encoder
        self.max_bytes = max_bytes
        self.should_stop = should_stop

    def write(self, reader: SnapshotReader) -> SnapshotResult:
        tables = reader.tables()
        position = reader.position
        txid = f"snapshot:{reader.snapshot_id}"
        commit_ts = format_ts(reader.started_at)
        self.writer.append(
            catalog.SNAPSHOT_BEGIN,
            {
                "snapshot_id": reader.snapshot_id,
                "position": position_to_json(position),
                "started": commit_ts,
                "tables": [schema_to_json(t) for t in tables],
            },
        )
        counts: dict[str, int] = {}
        total_bytes = 0
        seq = 0
        for table in tables:
            part = 0
            rows = 0
            builder = self._new_part(table)
            index: set[bytes] = set()
            links = list(self.link_columns.get(table.qualified, ()))
            for row in reader.rows(table):
                key = {c: row.get(c) for c in table.primary_key}
                ev = ChangeEvent("r", table.schema, table.table, seq, key, None, row,
                                 table.version)
                _eid, envelope = self.encoder.encode(ev, position, txid, commit_ts)
                builder.add(EventRecord(envelope))
                if self.hasher is not None:
                    index.update(index_entries(self.hasher, table, key, row, links))
                seq += 1
                rows += 1
                if builder.raw_bytes >= self.max_bytes:
                    total_bytes += self._store_part(
                        reader.snapshot_id, table, part, builder, index, links
                    )
                    part += 1
                    builder = self._new_part(table)
                    index = set()
                    self.writer.maybe_renew_lease()
                    if self.should_stop():
                        raise InterruptedError("snapshot interrupted by shutdown")
            total_bytes += self._store_part(reader.snapshot_id, table, part, builder, index, links)
            counts[table.qualified] = rows
            log.info("snapshot %s: %s rows of %s", reader.snapshot_id, rows, table.qualified)
        self.writer.append(
            catalog.SNAPSHOT_END,
            {
                "snapshot_id": reader.snapshot_id,
                "position": position_to_json(position),
                "started": commit_ts,
                "rows": counts,
                "bytes": total_bytes,
            },
        )
        return SnapshotResult(reader.snapshot_id, counts, total_bytes)

    @staticmethod
    def _new_part(table: TableSchema) -> SegmentBuilder:
        builder = SegmentBuilder()
        builder.add(SchemaRecord(table))
        return builder

    def _store_part(
        self,
        snapshot_id: str,
        table: TableSchema,
        part: int,
        builder: SegmentBuilder,
        index: set[bytes],
        links: list[str],
    ) -> int:
        key = self.writer.object_key("snapshots", ".seg")
        data_key = self.data_keys.current()
        archive_id = self.writer.archive_id
        blob = seal_object(data_key, archive_id, key, {"kind": "snapshot"}, [builder.finish()])
        self.writer.store.create(key, blob)
        body: dict[str, Any] = {
            "snapshot_id": snapshot_id,
            "table": table.qualified,
            "part": part,
            "object": key,
            "digest": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "rows": builder.records - 1,
        }
        stored = len(blob)
        if self.hasher is not None:
            index_key, index_blob = seal_index(data_key, archive_id, key, index)
            self.writer.store.create(index_key, index_blob)
            body |= {
                "index_object": index_key,
                "index_digest": hashlib.sha256(index_blob).hexdigest(),
                "index_size": len(index_blob),
                "link_columns": {table.qualified: links},
            }
            stored += len(index_blob)
        self.writer.append(catalog.SNAPSHOT_PART, body)
        return stored


def index_entries(
    hasher: KeyHasher,
    table: TableSchema,
    key: Mapping[str, Any],
    row: Mapping[str, Any],
    links: Sequence[str],
) -> Iterator[bytes]:
    """A snapshot row's index entries: its row key and its link-column values,
    hashed and truncated exactly as the archive sink indexes events."""
    if key:
        yield hasher.row_key(table.schema, table.table, key)[:INDEX_HASH_BYTES]
    for column in links:
        value = row.get(column)
        if value is not None:
            yield hasher.column_value(table.schema, table.table, column, value)[:INDEX_HASH_BYTES]
