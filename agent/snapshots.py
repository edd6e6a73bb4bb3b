"""Base snapshots of a running agent, and the archive times the metrics report.

`Snapshots` writes a snapshot through the agent's ArchiveWriter (initial,
scheduled or on demand) and keeps the times Prometheus alerts on: last
complete snapshot, oldest restorable instant, install time. They are read
from the catalog at start and updated as snapshots finish or `expire`
records a new horizon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.archive.catalog import CatalogEntry
from agent.archive.derived import link_columns
from agent.archive.reader import complete_snapshots
from agent.archive.retention import oldest_restorable
from agent.archive.snapshot import SnapshotWriter
from agent.archive.writer import ArchiveWriter
from agent.crypto.datakeys import DataKeyManager
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder
from agent.events import TableSchema
from agent.metrics import Metrics
from agent.scheduler import SnapshotOutcome
from agent.settings import EntityLink
from connectors.base import SnapshotReader

log = logging.getLogger(__name__)


@dataclass
class ArchiveTimes:
    """Unix times from the archive, for the metrics (None: not yet)."""

    installed: float | None = None
    last_snapshot: float | None = None
    oldest_restorable: float | None = None

    def read_entries(self, entries: Sequence[CatalogEntry]) -> None:
        if entries:
            self.installed = datetime.fromisoformat(entries[0].created).timestamp()
        snaps = complete_snapshots(list(entries))
        if snaps:
            self.last_snapshot = datetime.fromisoformat(snaps[-1].end.created).timestamp()
        oldest = oldest_restorable(list(entries))  # honours a retention horizon
        if oldest is not None:
            self.oldest_restorable = datetime.fromisoformat(oldest.started).timestamp()

    def horizon_recorded(self, horizon: str) -> None:
        self.oldest_restorable = datetime.fromisoformat(horizon).timestamp()


class Snapshots:
    def __init__(
        self,
        writer: ArchiveWriter,
        data_keys: DataKeyManager,
        encoder: EnvelopeEncoder,
        segment_max_bytes: int,
        metrics: Metrics,
        on_progress: Callable[[str], bool],
        hasher: KeyHasher | None = None,
        entity_links: Sequence[EntityLink] = (),
    ) -> None:
        self.writer = writer
        # Snapshot parts are indexed like segments (None: not indexed).
        self.hasher = hasher
        self.entity_links = list(entity_links)
        self.data_keys = data_keys
        self.encoder = encoder
        self.segment_max_bytes = segment_max_bytes
        self.metrics = metrics
        # Called between parts with a status line; returns True to stop.
        self.on_progress = on_progress
        self.times = ArchiveTimes()
        self._lock = threading.Lock()
        # The snapshot in progress (its held xmin is a metric).
        self.active: SnapshotReader | None = None
        # Table definitions of the newest snapshot this process wrote.
        self.latest_tables: list[TableSchema] = []

    def write(self, reader: SnapshotReader) -> SnapshotOutcome:
        """Write one snapshot; an interrupted one is left without its end entry."""
        with self._lock:
            self.active = reader
            self.on_progress(f"snapshot {reader.snapshot_id}")
            log.info("snapshot %s at %s started", reader.snapshot_id, reader.position.text)
            started = time.monotonic()
            try:
                tables = reader.tables()
                result = SnapshotWriter(
                    self.writer,
                    self.data_keys,
                    self.encoder,
                    self.segment_max_bytes,
                    lambda: self.on_progress(f"snapshot {reader.snapshot_id}"),
                    self.hasher,
                    link_columns(tables, self.entity_links),
                ).write(reader)
            finally:
                self.active = None
                reader.close()
        self.metrics.record_snapshot_duration(time.monotonic() - started)
        self.times.last_snapshot = time.time()
        self.latest_tables = tables
        if self.times.oldest_restorable is None:
            self.times.oldest_restorable = reader.started_at.timestamp()
        log.info("snapshot %s done: %s", result.snapshot_id, result.rows)
        return SnapshotOutcome(result.snapshot_id, reader.position.text, result.rows, result.bytes)
