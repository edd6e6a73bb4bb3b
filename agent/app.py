"""Composition root: builds everything from settings and owns its lifecycle.

`run` is crash-only at its core: every failure of a source or sink ends the
current pipeline; the loop here backs off and builds a fresh one from the
durable checkpoint. Only errors a retry cannot fix (bad configuration, the
source lost our position, another agent holds the archive) end the process.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from agent.archive import catalog
from agent.archive.access import open_store, verify_key_of
from agent.archive.catalog import CatalogEntry
from agent.archive.derived import archived_checkpoint, link_columns, newest_snapshot_tables
from agent.archive.retention import RetentionRequests
from agent.archive.sink import ArchiveSink
from agent.archive.writer import ArchiveWriter, agent_identity
from agent.checkpoint import (
    Checkpoint,
    CheckpointStore,
    Durable,
    now_utc,
    position_to_json,
)
from agent.crypto.datakeys import DataKeyManager
from agent.crypto.keyfiles import load_keyhash_key, load_recipient_public, load_signing_key
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder
from agent.errors import (
    ChangevaultError,
    ConfigError,
    PositionLostError,
    RefusedError,
    ServiceError,
    UncapturableChange,
    UsageError,
)
from agent.events import Position
from agent.http import HealthServer, ProgressWatch, Verdict
from agent.logs import configure_logging
from agent.metrics import Metrics
from agent.pipeline import Pipeline
from agent.reload import ReloadPlan, keep_running_value, plan_reload
from agent.retry import Backoff
from agent.scheduler import (
    SnapshotOutcome,
    SnapshotScheduler,
)
from agent.sdnotify import SystemdNotifier
from agent.settings import Settings, load_settings
from agent.snapshots import Snapshots
from connectors.base import Sink, SnapshotReader, Source
from connectors.storage.lease import LeaseHeld, LeaseLost

log = logging.getLogger(__name__)


def build_source(settings: Settings) -> Source:
    """The source connector named by `source.type`, imported only when used."""
    if settings.source.type == "postgres":
        from connectors.postgres.source import PostgresSource

        return PostgresSource(settings, settings.state_dir)
    from connectors.mysql.source import MySQLSource

    return MySQLSource(settings, settings.state_dir)


def source_id(settings: Settings) -> str:
    s = settings.source
    anchor = s.slot if s.type == "postgres" else str(s.server_id)
    return f"{s.type}:{s.database}:{anchor}"


class _MetricsObserver:
    """PipelineObserver that feeds the Prometheus metrics."""

    def __init__(self, metrics: Metrics, up: dict[str, bool]) -> None:
        self.metrics = metrics
        self.up = up  # read live by changevault_sink_up and /readyz

    def transaction_done(self, counts: dict[tuple[str, str], int]) -> None:
        for (table, op), n in counts.items():
            self.metrics.count_event(table, op, n)
        self.metrics.count_transaction()

    def sink_state(self, sink: str, up: bool) -> None:
        # Up once its open() succeeded; down from its failure until a rebuilt
        # pipeline opens it again.
        self.up[sink] = up

    def sink_error(self, sink: str) -> None:
        self.metrics.count_sink_error(sink)

    def sink_durable(self, sink: str, latencies: list[float]) -> None:
        for seconds in latencies:
            self.metrics.observe_sink_latency(sink, seconds)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        # Set by SIGHUP; the control thread does the reload.
        self.reload_requested = threading.Event()
        # Ends the current pipeline only: set on stop and when a reload needs a
        # rebuild (the loop then builds a new one from the checkpoint).
        self._pipeline_stop = threading.Event()
        self._ready_sent = False
        enc = settings.encryption
        if enc.signing_key_file is None:
            raise UsageError(f"{settings.origin}: encryption.signing_key_file is required for run")
        if enc.keyhash_key_file is None:
            raise UsageError(f"{settings.origin}: encryption.keyhash_key_file is required for run")
        self.signer = load_signing_key(enc.signing_key_file)
        self.recipients = [load_recipient_public(p) for p in enc.recipients]
        self.hasher = KeyHasher(load_keyhash_key(enc.keyhash_key_file))
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.agent_id = agent_identity(settings.state_dir)
        self.source_id = source_id(settings)
        self.checkpoints = CheckpointStore(settings.state_dir)
        self.metrics = Metrics(captured_tables=settings.source.tables)
        self.metrics.set_retention(settings.retention.total_seconds())
        self.progress = ProgressWatch(stall_after=120.0)
        self.notifier = SystemdNotifier()
        self.data_keys = DataKeyManager(
            self.recipients,
            self.signer,
            self.agent_id,
            max_age=enc.data_key_max_age,
            max_messages=enc.data_key_max_messages,
        )
        self.encoder = EnvelopeEncoder(settings.source.type, settings.source.database)
        self.store = open_store(settings)
        self.writer = ArchiveWriter(
            self.store, self.signer, verify_key_of(self.signer), self.source_id, self.agent_id
        )
        self.pipeline: Pipeline | None = None
        self.source: Source | None = None
        self._sinks_up: dict[str, bool] = {}
        self._checkpoint_ts: float | None = None
        self.position_lost = False
        self.snapshots = Snapshots(
            self.writer,
            self.data_keys,
            self.encoder,
            settings.archive.segment_max_bytes,
            self.metrics,
            self._snapshot_progress,
            self.hasher,
            settings.entity_links,
        )
        self.scheduler: SnapshotScheduler | None = None
        self.retention_requests: RetentionRequests | None = None
        self.http: HealthServer | None = None
        self._catalog: list[CatalogEntry] = []

    # ------------------------------------------------------------ metrics

    def _bind_metrics(self) -> None:
        m = self.metrics
        m.bind_up(lambda: not self.stop.is_set())
        m.bind_lag(self._lag)
        m.bind_behind_bytes(self._behind_bytes)
        # 0 rather than "no sample": the no-snapshot alert keys on the value.
        m.bind_checkpoint_timestamp(lambda: self._checkpoint_ts or 0.0)
        times = self.snapshots.times
        m.bind_last_snapshot_timestamp(lambda: times.last_snapshot or 0.0)
        m.bind_installed_timestamp(lambda: times.installed)
        m.bind_oldest_restorable_timestamp(lambda: times.oldest_restorable or 0.0)
        m.bind_position_lost(lambda: self.position_lost)
        m.bind_snapshot_xmin_age(self._snapshot_xmin_age)
        for name in self._sink_names():
            m.bind_sink_up(name, self._sink_up_fn(name))

    def _sink_up_fn(self, name: str) -> Callable[[], bool]:
        return lambda: self._sinks_up.get(name, False)

    def _lag(self) -> float:
        p = self.pipeline
        return 0.0 if p is None else p.lag_seconds(datetime.now(UTC))

    def _behind_bytes(self) -> float | None:
        src = self.source
        if src is None:
            return None
        value = src.behind_bytes()
        return None if value is None else float(value)

    def _snapshot_xmin_age(self) -> float | None:
        """Transactions the running snapshot's xmin is behind (PostgreSQL only)."""
        xmin = getattr(self.snapshots.active, "held_xmin", None)
        src = self.source
        if xmin is None or src is None:
            return None
        # Only PostgreSQL holds an xmin; its query runs on the source's
        # lock-protected control connection, safe from this scrape thread.
        xmin_age = getattr(src, "xmin_age", None)
        age = None if xmin_age is None else xmin_age(int(xmin))
        return None if age is None else float(age)

    def _sink_names(self) -> list[str]:
        return ["archive"] + (["kafka"] if self.settings.kafka is not None else [])

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        self._install_signals()
        self._bind_metrics()
        self.http = self._health_server(self.settings.metrics_listen)
        self.http.start()
        control = threading.Thread(target=self._control, name="control", daemon=True)
        try:
            self.notifier.status("opening the archive")
            self.writer.open()
            trusted = {self.writer.own_verify.key_id: self.writer.own_verify}
            # Read once: a long archive's catalog is many objects on S3.
            self._catalog = list(catalog.read_chain(self.store, trusted))
            self.snapshots.times.read_entries(self._catalog)
            control.start()
            self.scheduler = self._build_scheduler()
            self.scheduler.start()
            backoff = Backoff(initial=1.0, maximum=60.0)
            while not self.stop.is_set():
                try:
                    self._attempt()
                    backoff.reset()
                except (
                    PositionLostError, RefusedError, UncapturableChange, UsageError, LeaseHeld,
                    LeaseLost,
                ):
                    raise
                except ServiceError as exc:
                    delay = backoff.next_delay()
                    log.warning("capture interrupted: %s; retrying in %.1fs", exc, delay)
                    self.metrics.count_reconnect("pipeline")
                    self.stop.wait(delay)
            return 0
        except PositionLostError as exc:
            self.position_lost = True
            self._record_gap(exc)
            raise
        finally:
            self._request_stop()
            if control.ident is not None:
                control.join(5.0)  # it sends STOPPING=1
            else:
                self.notifier.stopping("stopping")
            if self.scheduler is not None:
                # A snapshot stops at its next part; it must not append after
                # the lease is released.
                self.scheduler.join(60.0)
            if self.source is not None:
                self.source.close()
            self.writer.close()
            if self.http is not None:
                self.http.stop()

    def _health_server(self, listen: str) -> HealthServer:
        return HealthServer(listen, self.metrics, self._liveness, self._streaming)

    def _attempt(self) -> None:
        # A fresh pipeline stop for this attempt; a stop already requested holds.
        self._pipeline_stop = threading.Event()
        if self.stop.is_set():
            self._pipeline_stop.set()
        cp = self.checkpoints.load(self.source_id) or self._checkpoint_from_archive()
        source = build_source(self.settings)
        self.source = source
        try:
            self.notifier.status("starting the source")
            snapshot = source.start(cp.position if cp else None)
            # Start-up checks passed: the archive is open (lease held) and the
            # source has our position. READY now, not after the initial
            # snapshot, which can take longer than any start timeout.
            self._announce_ready()
            if snapshot is not None:
                self._initial_snapshot(snapshot)
                cp = self.checkpoints.load(self.source_id)
            sinks = self._build_sinks(cp)
            pipeline = Pipeline(
                source,
                sinks,
                self.encoder,
                self._save_checkpoint,
                self._pipeline_stop,
                observer=_MetricsObserver(self.metrics, self._sinks_up),
                hasher=self.hasher,
            )
            self.pipeline = pipeline
            self.notifier.status(self._status_line())
            pipeline.run()
        finally:
            self.pipeline = None
            self.source = None
            source.close()

    def _record_gap(self, exc: PositionLostError) -> None:
        """Write the loss into the archive (we hold its lease), so `verify` and
        restore see the gap instead of an archive that merely stops."""
        if self.writer.catalog is None:
            return  # never opened: no lease, nothing to write into
        try:
            cp = self.checkpoints.load(self.source_id)
        except ChangevaultError:
            cp = None
        since = None if cp is None else position_to_json(cp.position)
        tail = self.writer.catalog.tail
        if tail is not None and tail.kind == catalog.GAP and tail.body.get("from") == since:
            return  # a restarted agent meeting the same loss: recorded once
        try:
            self.writer.append(catalog.GAP, {"from": since, "reason": str(exc)})
        except ChangevaultError as err:
            log.error("could not record the gap in the archive: %s", err)

    def _initial_snapshot(self, reader: SnapshotReader) -> None:
        self.notifier.status(f"initial snapshot {reader.snapshot_id}")
        self.snapshots.write(reader)
        self._save_checkpoint(Durable(0, reader.position, None))

    # ------------------------------------------------- scheduled snapshots

    def _build_scheduler(self) -> SnapshotScheduler:
        requests = RetentionRequests(
            self.writer, self.settings.retention, on_horizon=self.snapshots.times.horizon_recorded
        )
        self.retention_requests = requests
        return SnapshotScheduler(
            self.settings.snapshot_interval.total_seconds(),
            self.settings.state_dir,
            self._scheduled_snapshot,
            self._streaming,
            lambda: self.snapshots.times.last_snapshot,
            self.stop,
            on_failure=lambda exc: self.metrics.count_snapshot_failure(),
            chores=requests.poll,
        )

    def _scheduled_snapshot(self) -> SnapshotOutcome:
        """One snapshot beside the running stream (scheduler thread).

        The reader has its own connections (PostgreSQL: a TEMPORARY slot's
        export, imported on a new connection); the streaming source object is
        only asked to open it, and its shared control connection is locked.
        """
        source = self.source
        if source is None:
            raise ServiceError("the pipeline is restarting; the snapshot waits for it")
        return self.snapshots.write(source.take_snapshot())

    def snapshot_now(self) -> SnapshotOutcome:
        """`changevault snapshot` with no agent running: take the lease, snapshot, release."""
        self.writer.open()
        try:
            cp = self.checkpoints.load(self.source_id)
            if cp is None:
                raise UsageError(
                    f"no checkpoint in {self.settings.state_dir}: run `changevault run` first "
                    "(it takes the initial snapshot)"
                )
            source = build_source(self.settings)
            try:
                # Checks the position is still there and lists the tables; does not stream.
                source.start(cp.position)
                return self.snapshots.write(source.take_snapshot())
            finally:
                source.close()
        finally:
            self.writer.close()

    def _build_sinks(self, cp: Checkpoint | None) -> list[Sink]:
        sinks: list[Sink] = [
            ArchiveSink(
                self.writer,
                self.data_keys,
                self.hasher,
                link_columns(
                    self.snapshots.latest_tables or newest_snapshot_tables(self._catalog),
                    self.settings.entity_links,
                ),
                self.settings.archive.segment_max_bytes,
                self.settings.archive.segment_max_age.total_seconds(),
                cp.position if cp else None,
                on_segment=self.metrics.count_archive_segment,
                checkpoint=self._durable_position,
            )
        ]
        if self.settings.kafka is not None:
            from connectors.kafka.sink import KafkaSink

            sinks.append(KafkaSink(self.settings, self.data_keys, self.hasher))
        return sinks

    def _durable_position(self) -> Position | None:
        p = self.pipeline
        d = None if p is None else p.tracker.durable
        return None if d is None else d.position

    def _checkpoint_from_archive(self) -> Checkpoint | None:
        """When state_dir was lost (a new host): resume where every sink already was."""
        # A recorded gap ends what the archive can resume from: the source lost
        # that position, so only entries after the gap (a new snapshot) count.
        gaps = [i for i, e in enumerate(self._catalog) if e.kind == catalog.GAP]
        found = archived_checkpoint(self._catalog[gaps[-1] + 1 :] if gaps else self._catalog)
        if found is None:
            return None
        log.warning(
            "no checkpoint in %s: resuming from the archive's, %s", self.settings.state_dir, found
        )
        cp = Checkpoint(self.source_id, found, None, now_utc())
        self.checkpoints.save(cp)
        return cp

    def _snapshot_progress(self, status: str) -> bool:
        """Called between snapshot parts: a long snapshot is progress, not a hang."""
        self.notifier.status(status)
        self.progress.beat("snapshot")
        return self.stop.is_set()

    def _save_checkpoint(self, d: Durable) -> None:
        self.checkpoints.save(
            Checkpoint(self.source_id, d.position, d.commit_ts, now_utc())
        )
        self._checkpoint_ts = time.time()
        self.progress.beat("checkpoint")

    # ------------------------------------------- systemd, signals, reload

    def _announce_ready(self) -> None:
        if self._ready_sent:
            return
        self._ready_sent = True
        self.notifier.ready("start-up checks passed")
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()

    def _status_line(self) -> str:
        p = self.pipeline
        if p is None:
            return "starting the pipeline"
        d = p.tracker.durable
        where = d.position.text if d is not None else "none yet"
        return f"streaming; checkpoint {where}; lag {self._lag():.1f}s"

    def _watchdog(self) -> None:
        """Feed systemd's watchdog only while the pipeline makes progress."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not self.stop.wait(interval):
            if self._liveness().ok:
                self.notifier.watchdog()

    def _control(self) -> None:
        """Acts on the flags the signal handlers set; reports progress in STATUS=."""
        next_status = time.monotonic() + 5.0
        while not self.stop.wait(0.2):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if time.monotonic() >= next_status and self.pipeline is not None:
                next_status = time.monotonic() + 5.0
                self.notifier.status(self._status_line())
        log.info("stopping: finishing in-flight work")
        self.notifier.stopping("stopping: finishing in-flight work")

    def reload(self) -> ReloadPlan | None:
        """Re-read the configuration file; apply what is safe, report the rest."""
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            status = self._status_line() + "; configuration reloaded"
            # READY=1 ends the reload; before start-up READY it would claim too much.
            if self._ready_sent:
                self.notifier.ready(status)
            else:
                self.notifier.status(status)

    def _reload(self) -> ReloadPlan | None:
        running = self.settings
        try:
            new = load_settings(Path(running.origin))
        except ConfigError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return None
        plan = plan_reload(running, new)
        if plan.restart:
            log.warning(
                "reload: changed but applied only by a restart (running values kept): %s",
                ", ".join(plan.restart),
            )
        settings = plan.settings
        if "metrics_listen" in plan.live:
            settings = self._move_http(settings, running)
        if {"log_format", "log_level"} & set(plan.live):
            configure_logging(settings.log_format, settings.log_level)
        if self.scheduler is not None:
            self.scheduler.interval = settings.snapshot_interval.total_seconds()
        if self.retention_requests is not None:
            self.retention_requests.retention = settings.retention
        self.metrics.set_retention(settings.retention.total_seconds())
        self.settings = settings
        applied = plan.live + plan.rebuild
        log.info("reload: applied %s", ", ".join(applied) if applied else "no changes")
        if plan.rebuild:
            # Drains and confirms like a stop; the loop rebuilds from the checkpoint.
            log.info("reload: rebuilding the pipeline from the checkpoint")
            self._pipeline_stop.set()
        return plan

    def _move_http(self, settings: Settings, running: Settings) -> Settings:
        """Listen on the new address first; on failure keep the old one."""
        server = self._health_server(settings.metrics_listen)
        try:
            server.start()
        except ServiceError as exc:
            log.error("reload: %s; keeping %s", exc, running.metrics_listen)
            return keep_running_value(settings, running, "metrics_listen")
        old, self.http = self.http, server
        if old is not None:
            old.stop()
        return settings

    def _request_stop(self) -> None:
        self.stop.set()
        self._pipeline_stop.set()

    def _liveness(self) -> Verdict:
        p = self.pipeline
        if p is not None and time.monotonic() - p.last_progress < 60:
            self.progress.beat("pipeline")
        return self.progress.verdict()

    def _streaming(self) -> bool:
        p = self.pipeline
        return p is not None and p.streaming

    def _install_signals(self) -> None:
        # Handlers only set flags: the pipeline and the control thread act.
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._request_stop()

        def on_reload(signum: int, frame: FrameType | None) -> None:
            self.reload_requested.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_stop)
            signal.signal(signal.SIGINT, on_stop)
            signal.signal(signal.SIGHUP, on_reload)
