"""Which snapshot and which segments a restore needs, from the catalog alone.

The newest complete snapshot inside the target, then the segments that can
hold transactions after it and up to the target, chosen by the positions and
commit times each segment's catalog entry records — no segment is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.archive import catalog
from agent.archive.catalog import CatalogEntry
from agent.archive.reader import SnapshotInfo, complete_snapshots, entry_position, segment_entries
from agent.errors import IntegrityError, UsageError
from agent.restore.target import Target


@dataclass(frozen=True, slots=True)
class Plan:
    snapshot: SnapshotInfo
    segments: list[CatalogEntry]
    total_segments: int  # in the archive, for the report


def _oldest_restorable(snaps: list[SnapshotInfo]) -> str:
    if not snaps:
        return "none (the archive holds no complete snapshot yet)"
    oldest = min(snaps, key=lambda s: s.position.sort_key)
    return f"{oldest.started} (snapshot at {oldest.position.text})"


def make_plan(entries: list[CatalogEntry], target: Target) -> Plan:
    snaps = complete_snapshots(entries)
    usable = [s for s in snaps if target.snapshot_ok(s)]
    if not usable:
        raise UsageError(
            f"{target.description}: expected a target inside the retained window, found it "
            f"before the oldest complete snapshot; oldest restorable: {_oldest_restorable(snaps)}"
        )
    horizon = entries[-1].retention_horizon
    if (
        target.time is not None
        and horizon is not None
        and target.time < datetime.fromisoformat(horizon)
    ):
        raise UsageError(
            f"{target.description}: expected a time at or after the retention horizon "
            f"{horizon}, found an earlier one"
        )
    snap = max(usable, key=lambda s: (s.position.sort_key, s.end.seq))
    segments = _segments_after(segment_entries(entries), snap, target)
    _refuse_gaps(entries, snap, segments)
    return Plan(snap, segments, len(segment_entries(entries)))


def _segments_after(
    segments: list[CatalogEntry], snap: SnapshotInfo, target: Target
) -> list[CatalogEntry]:
    start = snap.position.sort_key
    first = None
    for i, e in enumerate(segments):
        last = entry_position(e, "last_position")
        if last is None or last.sort_key > start or e.body.get("tx_ends", 0) == 0:
            first = i
            break
    if first is None:
        return []
    # One segment more at the front: a transaction after the snapshot may have
    # begun in the segment before the first one that ends a later transaction.
    chosen: list[CatalogEntry] = []
    for e in segments[max(first - 1, 0) :]:
        if not _may_hold_target_txs(e, target):
            break
        chosen.append(e)
    return chosen


def _may_hold_target_txs(e: CatalogEntry, target: Target) -> bool:
    """False once a segment can only end transactions past the target."""
    if target.time is not None:
        first_commit = e.body.get("first_commit_ts")
        # The first transaction ending here is already too late: replay stops at it.
        return first_commit is None or datetime.fromisoformat(first_commit) <= target.time
    assert target.bound is not None
    after = entry_position(e, "after")
    # Every transaction ending here is after `after` (the last complete position before it).
    if after is None:
        return True
    return after.sort_key < target.bound


def _refuse_gaps(
    entries: list[CatalogEntry], snap: SnapshotInfo, segments: list[CatalogEntry]
) -> None:
    if not segments:
        return
    last_seq = segments[-1].seq
    for e in entries:
        if e.kind == catalog.GAP and snap.end.seq < e.seq <= last_seq:
            raise IntegrityError(
                f"catalog entry {e.seq}: the archive records a gap after snapshot "
                f"{snap.snapshot_id} ({e.body.get('reason', 'positions lost')}); "
                "choose a target before it"
            )
