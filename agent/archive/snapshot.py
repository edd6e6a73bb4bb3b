"""Writing a base snapshot into the archive (never to Kafka).

A snapshot is bracketed by catalog entries: `snapshot_begin` (id, position,
every table's definition), one `snapshot_part` per sealed object of `r`
events, and `snapshot_end` (row counts). Restore uses only snapshots that
have their end entry, so an interrupted snapshot is never half-used; the
next attempt starts a new one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.archive import catalog
from agent.archive.records import EventRecord, SchemaRecord, schema_to_json
from agent.archive.segment import SegmentBuilder, seal_object
from agent.archive.writer import ArchiveWriter
from agent.checkpoint import position_to_json
from agent.crypto.datakeys import DataKeyManager
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
    ) -> None:
        self.writer = writer
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
            for row in reader.rows(table):
                key = {c: row.get(c) for c in table.primary_key}
                ev = ChangeEvent("r", table.schema, table.table, seq, key, None, row,
                                 table.version)
                _eid, envelope = self.encoder.encode(ev, position, txid, commit_ts)
                builder.add(EventRecord(envelope))
                seq += 1
                rows += 1
                if builder.raw_bytes >= self.max_bytes:
                    total_bytes += self._store_part(reader.snapshot_id, table, part, builder)
                    part += 1
                    builder = self._new_part(table)
                    self.writer.maybe_renew_lease()
                    if self.should_stop():
                        raise InterruptedError("snapshot interrupted by shutdown")
            total_bytes += self._store_part(reader.snapshot_id, table, part, builder)
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
        self, snapshot_id: str, table: TableSchema, part: int, builder: SegmentBuilder
    ) -> int:
        key = self.writer.object_key("snapshots", ".seg")
        blob = seal_object(
            self.data_keys.current(), self.writer.archive_id, key, {"kind": "snapshot"},
            [builder.finish()],
        )
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
        self.writer.append(catalog.SNAPSHOT_PART, body)
        return len(blob)
