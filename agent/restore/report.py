"""The closing report of a restore, and the target DSN as it may be shown."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.restore.checksum import TableChecksum
from agent.settings import redact_url

_KV_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (URL or key=value form)."""
    if "://" in dsn:
        return redact_url(dsn)
    return _KV_PASSWORD.sub("password=***", dsn)


@dataclass
class TableResult:
    source: str
    target: str
    rows: int
    expected: TableChecksum
    actual: TableChecksum | None = None

    @property
    def ok(self) -> bool:
        return self.actual is not None and self.actual == self.expected


@dataclass
class RestoreReport:
    target: str
    position: str
    commit_ts: str
    txid: str | None
    snapshot_id: str
    snapshot_position: str
    segments_read: int
    segments_total: int
    transactions: int
    target_schema: str
    target_dsn: str
    tables: list[TableResult] = field(default_factory=list)
    skipped_tables: list[str] = field(default_factory=list)
    bytes_read: int = 0  # data objects fetched: segments, indexes, snapshot parts
    objects_read: int = 0
    catalog_bytes: int = 0  # the catalog, always read whole
    archive_bytes: int = 0  # segments, their indexes and the snapshot's parts
    scope_tables: list[str] = field(default_factory=list)  # an entity's tables
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        stop = f"transaction {self.txid}" if self.txid else "the snapshot"
        out = [
            f"restore {self.target}",
            f"  stopped at position {self.position} (commit time {self.commit_ts}, after {stop})",
            f"  from snapshot {self.snapshot_id} at {self.snapshot_position}, then "
            f"{self.transactions} transactions from {self.segments_read} of "
            f"{self.segments_total} segments",
            f"  read {self.objects_read} objects, {self.bytes_read} bytes of segments, indexes "
            f"and snapshot parts (of {self.archive_bytes} bytes in the archive), "
            f"plus {self.catalog_bytes} bytes of catalog",
            f"  into schema {self.target_schema} of {self.target_dsn}",
        ]
        if self.scope_tables:
            out.append(f"  tables in scope: {', '.join(self.scope_tables)}")
        for t in self.tables:
            state = "ok" if t.ok else "MISMATCH"
            out.append(
                f"  {t.source} -> {t.target}: {t.rows} rows, checksum {t.expected.hex()} {state}"
            )
        out.extend(self.notes)
        for name in self.skipped_tables:
            out.append(f"  {name}: skipped (no table definition in the archive)")
        return out
