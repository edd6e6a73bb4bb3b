"""Retention: `changevault expire`, and the agent's side of it.

The rule: keep the newest complete snapshot that started at or before
`now - retention` and everything the catalog holds after it; expire the head
of the chain before that. Every instant inside the window then stays
restorable (from that snapshot plus the kept segments).

Declare first, delete second. A `retention` catalog entry (first_kept_seq,
horizon, counts) is appended before anything is deleted, so a crash in the
middle leaves an archive whose chain says what is gone; running `expire`
again finishes the job. Only one process appends to the catalog (the lease
holder), so:

- no agent holds the lease: `expire` takes it briefly, appends the entry
  itself (signed with `encryption.signing_key_file`), and releases it;
- the agent holds it: `expire` creates a request object
  `requests/retention/<id>.json`; the agent checks it against its own
  `retention` (it refuses to shorten the window) and appends the entry;
  `expire` waits for that entry, then deletes.

Deleting needs credentials the agent does not have (docs/retention.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.archive import catalog
from agent.archive.access import open_store, trusted_keys
from agent.archive.catalog import CatalogEntry, CatalogWriter
from agent.archive.reader import SnapshotInfo, complete_snapshots, entry_position
from agent.archive.writer import LEASE_NAME, ArchiveWriter, now_iso
from agent.crypto.keyfiles import VerifyKey, load_signing_key
from agent.errors import IntegrityError, ServiceError, UsageError
from agent.settings import Settings, load_settings
from connectors.base import ObjectExists, ObjectStore
from connectors.storage.lease import LEASE_PREFIX, ArchiveLease, LeaseHeld

log = logging.getLogger(__name__)

REQUEST_PREFIX = "requests/retention/"
# How long `expire` waits for a running agent to record its request.
REQUEST_WAIT_SECONDS = 120.0
# Unreferenced objects (a crash between creating an object and its catalog
# entry) are removed only when this much older than the horizon.
_ORPHAN_MARGIN = timedelta(hours=1)
_OBJECT_TIME = re.compile(r"^(?:segments|snapshots)/(\d{4})/(\d{2})/(\d{2})/(\d{12})-")


def _ts(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


# ------------------------------------------------------------------ planning


@dataclass(frozen=True)
class RetentionPlan:
    first_kept_seq: int
    horizon: str  # ISO 8601: start of the kept snapshot, the oldest restorable instant
    snapshot_id: str
    removed: dict[str, int] = field(default_factory=dict)

    def body(self, request_id: str | None, requested_by: str) -> dict[str, Any]:
        return {
            "first_kept_seq": self.first_kept_seq,
            "horizon": self.horizon,
            "snapshot_id": self.snapshot_id,
            "removed": self.removed,
            "request_id": request_id,
            "requested_by": requested_by,
        }


def declared_first_kept(entries: list[CatalogEntry]) -> int:
    """The highest first_kept_seq any retention entry declared (else the head's seq)."""
    seqs = [int(e.body["first_kept_seq"]) for e in entries if e.kind == catalog.RETENTION]
    return max([entries[0].seq, *seqs]) if entries else 0


def horizon_of(entries: list[CatalogEntry]) -> str | None:
    return entries[-1].retention_horizon if entries else None


def oldest_restorable(entries: list[CatalogEntry]) -> SnapshotInfo | None:
    """The oldest complete snapshot the archive still promises to restore from."""
    snaps = complete_snapshots(entries)
    horizon = horizon_of(entries)
    if horizon is not None:
        snaps = [s for s in snaps if _ts(s.started) >= _ts(horizon)]
    return snaps[0] if snaps else None


def plan_retention(
    entries: list[CatalogEntry], now: datetime, retention: timedelta
) -> RetentionPlan | None:
    """What to expire, or None when the head is already as short as the window allows."""
    cutoff = now - retention
    candidates = [s for s in complete_snapshots(entries) if _ts(s.started) <= cutoff]
    if not candidates:
        return None
    snap = candidates[-1]
    first_kept = min(snap.begin.seq, _first_needed_segment(entries, snap))
    if first_kept <= declared_first_kept(entries):
        return None
    expired = [e for e in entries if e.seq < first_kept]
    return RetentionPlan(first_kept, snap.started, snap.snapshot_id, _count(expired))


def _first_needed_segment(entries: list[CatalogEntry], snap: SnapshotInfo) -> int:
    """Seq of the first segment restore from `snap` may need.

    A segment is only safe to drop when every transaction in it ends at or
    before the snapshot's position. Segments record where their last
    complete transaction ends, not whether one is still open at their end,
    so the segment before the first one that reaches past the snapshot (or
    that holds no transaction end: the middle of a large transaction) is
    kept too: a large transaction may begin there.
    """
    segments = [e for e in entries if e.kind == catalog.SEGMENT]
    if not segments:
        return snap.begin.seq
    cut = snap.position.sort_key
    reach = len(segments)
    for i, seg in enumerate(segments):
        last = entry_position(seg, "last_position")
        if last is None or int(seg.body.get("tx_ends", 0)) == 0 or last.sort_key > cut:
            reach = i
            break
    return segments[max(reach - 1, 0)].seq


def _objects(entry: CatalogEntry) -> list[tuple[str, int]]:
    if entry.kind == catalog.SEGMENT:
        return [
            (entry.body["object"], int(entry.body.get("size", 0))),
            (entry.body["index_object"], int(entry.body.get("index_size", 0))),
        ]
    if entry.kind == catalog.SNAPSHOT_PART:
        return [(entry.body["object"], int(entry.body.get("size", 0)))]
    return []


def _count(expired: Iterable[CatalogEntry]) -> dict[str, int]:
    counts = {"catalog_entries": 0, "segments": 0, "snapshot_parts": 0, "snapshots": 0, "bytes": 0}
    for e in expired:
        counts["catalog_entries"] += 1
        if e.kind == catalog.SEGMENT:
            counts["segments"] += 1
        elif e.kind == catalog.SNAPSHOT_PART:
            counts["snapshot_parts"] += 1
        elif e.kind == catalog.SNAPSHOT_END:
            counts["snapshots"] += 1
        counts["bytes"] += sum(size for _key, size in _objects(e))
    return counts


# ------------------------------------------------------- the agent's side


class RetentionRequests:
    """Run by the agent (lease holder): records valid retention requests in the catalog."""

    def __init__(
        self,
        writer: ArchiveWriter,
        retention: timedelta,
        on_horizon: Callable[[str], None] = lambda horizon: None,
    ) -> None:
        self.writer = writer
        self.retention = retention
        self.on_horizon = on_horizon
        self._handled: set[str] = set()

    def poll(self) -> None:
        store = self.writer.store
        new = [
            o.key
            for o in store.list(REQUEST_PREFIX)
            if o.key.endswith(".json") and o.key not in self._handled
        ]
        if not new:
            return
        trusted = {self.writer.own_verify.key_id: self.writer.own_verify}
        entries = list(catalog.read_chain(store, trusted))
        for key in new:
            self._handled.add(key)
            try:
                self._handle(key, store.get(key), entries)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring retention request %s: malformed (%s)", key, exc)

    def _handle(self, key: str, raw: bytes, entries: list[CatalogEntry]) -> None:
        doc = json.loads(raw)
        request_id = str(doc["request_id"])
        if any(
            e.kind == catalog.RETENTION and e.body.get("request_id") == request_id for e in entries
        ):
            return  # recorded before a restart; expire deletes the request object
        reason = self._refusal(doc, entries)
        if reason is not None:
            log.warning("refusing retention request %s: %s", key, reason)
            return
        plan = RetentionPlan(
            int(doc["first_kept_seq"]),
            str(doc["horizon"]),
            str(doc["snapshot_id"]),
            {k: int(v) for k, v in dict(doc.get("removed", {})).items()},
        )
        entry = self.writer.append(
            catalog.RETENTION,
            plan.body(request_id, str(doc.get("requested_by", "expire"))),
            horizon=plan.horizon,
        )
        entries.append(entry)
        log.info(
            "retention: entries before %s expire; oldest restorable point is %s",
            plan.first_kept_seq,
            plan.horizon,
        )
        self.on_horizon(plan.horizon)

    def _refusal(self, doc: dict[str, Any], entries: list[CatalogEntry]) -> str | None:
        if doc.get("archive_id") != self.writer.archive_id:
            return f"it is for archive {doc.get('archive_id')}, not {self.writer.archive_id}"
        first_kept = int(doc["first_kept_seq"])
        if first_kept <= declared_first_kept(entries):
            return f"entries before {first_kept} are already expired"
        snaps = [s for s in complete_snapshots(entries) if s.snapshot_id == doc["snapshot_id"]]
        if not snaps or snaps[0].started != doc["horizon"] or snaps[0].begin.seq < first_kept:
            return "it does not keep the complete snapshot it names"
        if first_kept > _first_needed_segment(entries, snaps[0]):
            return "it would drop segments needed after the kept snapshot"
        # Our own retention is the floor: a request (anyone with create rights
        # can post one) never shortens the window the agent was configured with.
        if _ts(str(doc["horizon"])) > datetime.now(UTC) - self.retention:
            return f"its horizon {doc['horizon']} is inside this agent's retention window"
        return None


# ---------------------------------------------------------------- expire


@dataclass
class ExpireReport:
    declared: RetentionPlan | None = None
    deleted_entries: int = 0
    deleted_objects: int = 0
    deleted_bytes: int = 0
    orphans: int = 0
    leases: int = 0
    first_kept_seq: int = 0
    horizon: str | None = None
    lines: list[str] = field(default_factory=list)


class Expirer:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        trusted: dict[str, VerifyKey],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        request_wait: float = REQUEST_WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.trusted = trusted
        self.now = now
        self.request_wait = request_wait
        self.who = f"expire@{socket.gethostname()}"

    def entries(self) -> list[CatalogEntry]:
        entries = list(catalog.read_chain(self.store, self.trusted))
        if not entries:
            raise IntegrityError(f"{self.store.url}: the archive has no catalog")
        return entries

    def run(self) -> ExpireReport:
        report = ExpireReport()
        entries = self.entries()
        plan = plan_retention(entries, self.now(), self.settings.retention)
        if plan is not None:
            self._declare(plan, entries[0].archive_id)
            report.declared = plan
            entries = self.entries()
        target = declared_first_kept(entries)
        report.first_kept_seq = target
        report.horizon = horizon_of(entries)
        self._delete_head(entries, target, report)
        self._delete_orphans(entries, report)
        self._prune_leases(report)
        self._prune_requests(entries)
        return report

    # ------------------------------------------------------------ declare

    def _declare(self, plan: RetentionPlan, archive_id: str) -> None:
        lease = ArchiveLease(self.store, LEASE_NAME, f"expire-{uuid.uuid4().hex[:12]}", 60.0)
        holder = lease.current()
        if holder is None or not holder.live(time.time(), lease.grace):
            try:
                lease.acquire()
            except LeaseHeld:
                pass  # an agent started meanwhile: ask it
            else:
                try:
                    self._append_ourselves(plan)
                finally:
                    lease.release()
                return
        self._ask_agent(plan, archive_id)

    def _append_ourselves(self, plan: RetentionPlan) -> None:
        key_file = self.settings.encryption.signing_key_file
        if key_file is None:
            raise UsageError(
                f"{self.settings.origin}: encryption.signing_key_file: expected the archive's "
                "signing key (no agent is running, so expire records the retention entry itself)"
            )
        signer = load_signing_key(key_file)
        tail = self.entries()[-1]  # re-read under the lease: the chain may have grown
        writer = CatalogWriter(self.store, signer, tail.archive_id, self.who, tail)
        writer.append(catalog.RETENTION, plan.body(None, self.who), now_iso(), plan.horizon)

    def _ask_agent(self, plan: RetentionPlan, archive_id: str) -> None:
        request_id = uuid.uuid4().hex
        doc = {
            "request_id": request_id,
            "archive_id": archive_id,
            "requested_at": now_iso(),
            "requested_by": self.who,
            "first_kept_seq": plan.first_kept_seq,
            "horizon": plan.horizon,
            "snapshot_id": plan.snapshot_id,
            "removed": plan.removed,
        }
        key = f"{REQUEST_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{request_id}.json"
        try:
            self.store.create(key, json.dumps(doc, sort_keys=True).encode())
        except ObjectExists:
            raise ServiceError(f"{self.store.url}: {key} exists already") from None
        deadline = time.monotonic() + self.request_wait
        start = self.entries()[-1].seq
        while time.monotonic() < deadline:
            for e in catalog.read_chain(self.store, self.trusted, start_seq=start):
                if e.kind == catalog.RETENTION and e.body.get("request_id") == request_id:
                    return
            time.sleep(1.0)
        raise ServiceError(
            f"{self.store.url}: the agent holding the archive lease did not record retention "
            f"request {request_id} within {self.request_wait:.0f}s (is it running, with the same "
            "retention or a shorter one?); nothing was deleted"
        )

    # ------------------------------------------------------------- delete

    def _delete_head(self, entries: list[CatalogEntry], target: int, report: ExpireReport) -> None:
        # Ascending, each entry's objects before the entry itself: whatever
        # remains after a crash is a contiguous chain whose objects exist.
        for e in entries:
            if e.seq >= target:
                break
            for key, size in _objects(e):
                self.store.delete(key)
                report.deleted_objects += 1
                report.deleted_bytes += size
            self.store.delete(catalog.entry_key(e.seq))
            report.deleted_entries += 1
        # Packs holding any removed entry: readers skip them already (their first
        # entry is not listed), and the expired entries' metadata goes with them.
        for key in catalog.list_pack_keys(self.store):
            span = catalog.pack_range(key)
            if span is not None and span[0] < target:
                self.store.delete(key)

    def _delete_orphans(self, entries: list[CatalogEntry], report: ExpireReport) -> None:
        """Objects no entry names (a crash before their entry), well before the horizon."""
        horizon = horizon_of(entries)
        if horizon is None:
            return
        limit = _ts(horizon) - _ORPHAN_MARGIN
        named = {key for e in entries for key, _size in _objects(e)}
        for prefix in ("segments/", "snapshots/"):
            for info in list(self.store.list(prefix)):
                m = _OBJECT_TIME.match(info.key)
                if m is None or info.key in named:
                    continue
                y, mo, d, hms = m.groups()
                created = datetime.strptime(f"{y}{mo}{d}{hms}", "%Y%m%d%H%M%S%f").replace(
                    tzinfo=UTC
                )
                if created < limit:
                    self.store.delete(info.key)
                    report.orphans += 1

    def _prune_leases(self, report: ExpireReport) -> None:
        """Lease records accumulate one per renewal; only the newest matters."""
        keys = [o.key for o in self.store.list(f"{LEASE_PREFIX}{LEASE_NAME}/")]
        for key in keys[:-2]:
            self.store.delete(key)
            report.leases += 1

    def _prune_requests(self, entries: list[CatalogEntry]) -> None:
        recorded = {
            str(e.body.get("request_id"))
            for e in entries
            if e.kind == catalog.RETENTION and e.body.get("request_id")
        }
        for info in list(self.store.list(REQUEST_PREFIX)):
            if any(rid in info.key for rid in recorded):
                self.store.delete(info.key)


def expire_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    from agent.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    store = open_store(settings)
    report = Expirer(settings, store, trusted_keys(settings)).run()
    window = settings.retention
    if report.declared is None and report.deleted_entries == 0:
        print(
            f"nothing to expire: no complete snapshot older than the retention window "
            f"({window}) that would shorten the archive; oldest restorable point: "
            f"{report.horizon or 'the first snapshot'}"
        )
    else:
        print(
            f"expired catalog entries before {report.first_kept_seq}: "
            f"{report.deleted_entries} entries, {report.deleted_objects} objects, "
            f"{report.deleted_bytes} bytes; oldest restorable point: {report.horizon}"
        )
    if report.orphans or report.leases:
        print(f"also removed {report.orphans} unreferenced objects, {report.leases} lease records")
    return 0
