"""`changevault status`: where capture stands, read from state_dir, the source and the archive.

Works whether the agent runs or not: the checkpoint file, the archive's
signed catalog and lease, and one read-only query to the source for the log
it retains for us. Prints figures only: never the DSN, passwords or keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from agent.archive import catalog
from agent.archive.access import open_store, trusted_keys
from agent.archive.reader import complete_snapshots
from agent.archive.retention import horizon_of, oldest_restorable
from agent.archive.writer import LEASE_NAME
from agent.checkpoint import Checkpoint, CheckpointStore
from agent.errors import ChangevaultError
from agent.settings import Settings, load_settings
from connectors.storage.lease import ArchiveLease

log = logging.getLogger(__name__)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _source_id(settings: Settings) -> str:
    from agent.app import source_id

    return source_id(settings)


def source_figures(settings: Settings, cp: Checkpoint | None) -> dict[str, Any]:
    """Log bytes the source retains for us; None when it cannot be asked."""
    from agent.app import build_source

    try:
        source = build_source(settings)
    except ChangevaultError as exc:
        return {"behind_bytes": None, "source_error": str(exc)}
    try:
        if cp is not None:
            source.confirm(cp.position)  # MySQL measures from the confirmed position
        behind = source.behind_bytes()
    finally:
        # PostgreSQL holds a control connection to close. The MySQL source's
        # close() saves its schema history into state_dir, which a running
        # agent owns: never from status.
        if source.connector == "postgres":
            source.close()
    return {"behind_bytes": behind}


def archive_figures(settings: Settings) -> dict[str, Any]:
    store = open_store(settings)
    out: dict[str, Any] = {"archive": store.url}
    holder = ArchiveLease(store, LEASE_NAME, "status", 60.0).current()
    running = holder is not None and holder.live(time.time())
    out["agent_running"] = running
    out["lease_holder"] = (
        f"{holder.owner_id} (host {holder.host}, pid {holder.pid})" if running and holder else None
    )
    entries = list(catalog.read_chain(store, trusted_keys(settings)))
    segments = [e for e in entries if e.kind == catalog.SEGMENT]
    parts = [e for e in entries if e.kind == catalog.SNAPSHOT_PART]
    snaps = complete_snapshots(entries)
    last = snaps[-1] if snaps else None
    oldest = oldest_restorable(entries)
    out.update(
        {
            "catalog_entries": len(entries),
            "archive_segments": len(segments),
            "archive_snapshots": len(snaps),
            "archive_bytes": sum(
                int(e.body.get("size", 0)) + int(e.body.get("index_size", 0)) for e in segments
            )
            + sum(int(e.body.get("size", 0)) for e in parts),
            "last_snapshot_id": last.snapshot_id if last else None,
            "last_snapshot_position": last.position.text if last else None,
            "last_snapshot_time": last.end.created if last else None,
            "next_snapshot_due": _iso(
                datetime.fromisoformat(last.end.created).timestamp()
                + settings.snapshot_interval.total_seconds()
            )
            if last
            else None,
            "oldest_restorable_time": oldest.started if oldest else None,
            "retention_horizon": horizon_of(entries),
        }
    )
    return out


def collect(settings: Settings) -> dict[str, Any]:
    cp = CheckpointStore(settings.state_dir).load(_source_id(settings))
    now = datetime.now(UTC)
    figures: dict[str, Any] = {
        "source_type": settings.source.type,
        "database": settings.source.database,
        "checkpoint_position": cp.position.text if cp else None,
        "checkpoint_commit_time": cp.commit_ts.isoformat() if cp and cp.commit_ts else None,
        "checkpoint_saved_at": cp.saved_at.isoformat() if cp else None,
        # Lag as far as the checkpoint shows it: since the commit of the newest
        # durable transaction, or, when the checkpoint last moved on a
        # heartbeat (caught up, nothing captured pending), since it was saved.
        "lag_seconds": round((now - (cp.commit_ts or cp.saved_at)).total_seconds(), 3)
        if cp
        else None,
    }
    figures.update(source_figures(settings, cp))
    figures.update(archive_figures(settings))
    figures["retention_seconds"] = settings.retention.total_seconds()
    figures["snapshot_interval_seconds"] = settings.snapshot_interval.total_seconds()
    return figures


def status_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    figures = collect(settings)
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        for name, value in figures.items():
            print(f"{name}: {'-' if value is None else value}")
    return 0
