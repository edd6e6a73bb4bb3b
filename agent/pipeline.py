"""Source -> encode -> sinks, with bounded queues and a gap-free checkpoint.

One thread reads the source and encodes envelopes; each sink has its own
thread fed through a bounded queue. A full queue blocks the reader: that is
the backpressure, and it is what keeps memory bounded whatever the rate (a
large transaction streams through; it is never collected in memory).

Failure handling is crash-only: when a sink or the source fails, the run
ends with that error and nothing is confirmed past what every sink made
durable. The caller rebuilds the pipeline and resumes from the checkpoint;
transactions after it are delivered again with the same ids (at-least-once).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent.checkpoint import AckTracker, Durable
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder, format_ts
from agent.errors import ChangevaultError, ServiceError
from agent.events import Heartbeat, Transaction
from connectors.base import EncodedEvent, Sink, SinkItem, Source, TxBegin, TxEnd

log = logging.getLogger(__name__)

# Sentinel batch (compared by identity): drain and close.
_STOP: list[SinkItem] = []
_TICK_INTERVAL = 0.25  # seconds between sink.tick() calls while items flow


class PipelineObserver(Protocol):
    """What the pipeline reports; implemented by the metrics adapter."""

    def transaction_done(self, counts: dict[tuple[str, str], int]) -> None: ...

    def sink_state(self, sink: str, up: bool) -> None: ...

    def sink_error(self, sink: str) -> None: ...

    def sink_durable(self, sink: str, latencies: list[float]) -> None:
        """Commit -> durable-in-`sink` seconds of each transaction newly durable there
        (any thread)."""


class NullObserver:
    def transaction_done(self, counts: dict[tuple[str, str], int]) -> None:
        pass

    def sink_state(self, sink: str, up: bool) -> None:
        pass

    def sink_error(self, sink: str) -> None:
        pass

    def sink_durable(self, sink: str, latencies: list[float]) -> None:
        pass


@dataclass
class PipelineOptions:
    # Items travel to the sink threads in batches (one queue operation per
    # batch, not per event); memory is bounded by queue_batches * batch_items.
    queue_batches: int = 64
    batch_items: int = 256
    # Seconds between confirmations (checkpoint file + source feedback): how long
    # the checkpoint may trail what every sink made durable.
    confirm_interval: float = 0.25
    drain_timeout: float = 60.0
    # A sink call (a put, a flush) that has not returned for this long means a
    # hung endpoint: the run fails like any sink error, so the outage shows in
    # the metrics and the pipeline is rebuilt, instead of waiting silently.
    stall_timeout: float = 20.0


class _SinkWorker:
    """Feeds one sink from its bounded queue; remembers its failure."""

    def __init__(self, sink: Sink, maxsize: int, on_fail: Callable[[], None]) -> None:
        self.sink = sink
        self.queue: queue.Queue[list[SinkItem]] = queue.Queue(maxsize)
        self.error: BaseException | None = None
        # monotonic time the current call into the sink started; None when idle
        self.busy_since: float | None = None
        self._on_fail = on_fail
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def _run(self) -> None:
        try:
            last_tick = time.monotonic()
            while True:
                item: list[SinkItem] | None
                try:
                    item = self.queue.get(timeout=0.5)
                except queue.Empty:
                    item = None
                self.busy_since = time.monotonic()
                if item is _STOP:
                    self.sink.flush(timeout=60.0)
                    return
                if item is not None:
                    for one in item:
                        self.sink.accept(one)
                now = time.monotonic()
                # Often enough that a segment closes soon after segment_max_age
                # (durability latency), rarely enough to cost nothing per item.
                if item is None or now - last_tick >= _TICK_INTERVAL:
                    self.sink.tick()
                    last_tick = now
                self.busy_since = None
        except BaseException as exc:
            self.error = exc
            self._on_fail()


class Pipeline:
    def __init__(
        self,
        source: Source,
        sinks: Sequence[Sink],
        encoder: EnvelopeEncoder,
        confirm: Callable[[Durable], None],
        stop: threading.Event,
        observer: PipelineObserver | None = None,
        options: PipelineOptions | None = None,
        first_index: int = 1,
        hasher: KeyHasher | None = None,
    ) -> None:
        self.source = source
        self.sinks = list(sinks)
        self.encoder = encoder
        # The row key (HMAC) is computed here once per event for every sink
        # that needs it (Kafka message key, archive index), not once per sink.
        self.hasher = hasher
        self._confirm = confirm
        self._stop = stop
        self._failed = threading.Event()
        self.observer: PipelineObserver = observer or NullObserver()
        self.tracker = AckTracker((s.name for s in self.sinks), self.observer.sink_durable)
        self.options = options or PipelineOptions()
        self._next_index = first_index
        self._batch: list[SinkItem] = []
        self._confirmed: Durable | None = None
        self._last_confirm = 0.0
        self.last_progress = time.monotonic()
        self.streaming = False

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        """Stream until `stop` is set (drain, confirm, return) or a failure (raise)."""
        workers = [
            _SinkWorker(s, self.options.queue_batches, self._failed.set) for s in self.sinks
        ]
        for w in workers:
            w.sink.open(self._ack_for(w.sink.name))
            self.observer.sink_state(w.sink.name, True)
            w.thread.start()
        try:
            self.streaming = True
            for item in self.source.stream():
                self._check_workers(workers)
                if isinstance(item, Heartbeat):
                    self._send_batch(workers)
                    self.tracker.register(self._take_index(), item.position, None)
                else:
                    self._feed(item, workers)
                self.last_progress = time.monotonic()
                self._maybe_confirm()
                if self._stop.is_set():
                    break
            self.streaming = False
            self._drain(workers)
        except BaseException:
            self.streaming = False
            self._abort(workers)
            raise

    def _take_index(self) -> int:
        idx = self._next_index
        self._next_index += 1
        return idx

    def _feed(self, tx: Transaction, workers: list[_SinkWorker]) -> None:
        idx = self._take_index()
        commit_ts = format_ts(tx.commit_ts)
        begin = TxBegin(
            idx, tx.position, tx.txid, tx.commit_ts, tuple(tx.schemas), tx.snapshot_id
        )
        self._put(begin, workers)
        # The per-event loop is the source thread's hot path: locals, the batch
        # list appended to directly, counts keyed by the objects at hand (the
        # "schema.table" names are built once per transaction below).
        encode = self.encoder.encode
        row_key = None if self.hasher is None else self.hasher.row_key
        position, txid = tx.position, tx.txid
        batch_items = self.options.batch_items
        raw_counts: dict[tuple[str, str, str], int] = {}
        for ev in tx.events:
            eid, envelope = encode(ev, position, txid, commit_ts)
            key = None
            if row_key is not None and ev.op != "t":
                key = row_key(ev.schema, ev.table, ev.key or {})
            batch = self._batch
            batch.append(EncodedEvent(idx, eid, ev, envelope, key))
            if len(batch) >= batch_items:
                self._send_batch(workers)
            k = (ev.schema, ev.table, ev.op)
            raw_counts[k] = raw_counts.get(k, 0) + 1
        counts: dict[tuple[str, str], int] = {}
        for (schema, table, op), n in raw_counts.items():
            counts[(f"{schema}.{table}", op)] = n
        per_table: dict[str, int] = {}
        for (table, _op), n in counts.items():
            per_table[table] = per_table.get(table, 0) + n
        self.tracker.register(idx, tx.position, tx.commit_ts)
        self._put(TxEnd(idx, tx.position, tx.commit_ts, per_table), workers)
        self._send_batch(workers)
        self.observer.transaction_done(counts)

    def _put(self, item: SinkItem, workers: list[_SinkWorker]) -> None:
        self._batch.append(item)
        if len(self._batch) >= self.options.batch_items:
            self._send_batch(workers)

    def _send_batch(self, workers: list[_SinkWorker]) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        for w in workers:
            while True:
                try:
                    w.queue.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    # Backpressure: wait for the sink, but notice its failure.
                    self._check_workers(workers)

    def _check_workers(self, workers: list[_SinkWorker], draining: bool = False) -> None:
        if not draining:
            self._check_stalled(workers)
        if not self._failed.is_set():
            return
        for w in workers:
            if w.error is not None:
                self.observer.sink_error(w.sink.name)
                self.observer.sink_state(w.sink.name, False)
                err = w.error
                if isinstance(err, ChangevaultError):
                    raise err
                raise ServiceError(
                    f"sink {w.sink.name} failed: {type(err).__name__}: {err}"
                ) from err

    def _stalled(self, w: _SinkWorker) -> bool:
        since = w.busy_since
        return since is not None and time.monotonic() - since > self.options.stall_timeout

    def _check_stalled(self, workers: list[_SinkWorker]) -> None:
        now = time.monotonic()
        for w in workers:
            since = w.busy_since
            if since is not None and now - since > self.options.stall_timeout:
                self.observer.sink_error(w.sink.name)
                self.observer.sink_state(w.sink.name, False)
                raise ServiceError(
                    f"sink {w.sink.name}: a write has not returned for {now - since:.0f}s "
                    "(endpoint down or hung?); holding the checkpoint and retrying"
                )

    def _ack_for(self, sink: str) -> Callable[[int], None]:
        def ack(index: int) -> None:
            self.tracker.complete_through(sink, index)

        return ack

    # --------------------------------------------------------------- confirm

    def _maybe_confirm(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_confirm < self.options.confirm_interval:
            return
        self._last_confirm = now
        durable = self.tracker.durable
        if durable is None or durable == self._confirmed:
            return
        self._confirm(durable)
        self.source.confirm(durable.position)
        self._confirmed = durable

    def _drain(self, workers: list[_SinkWorker]) -> None:
        for w in workers:
            self._put_stop(w)
        deadline = time.monotonic() + self.options.drain_timeout
        for w in workers:
            w.thread.join(max(0.1, deadline - time.monotonic()))
        self._check_workers(workers, draining=True)
        self.tracker.wait_idle(max(0.1, deadline - time.monotonic()))
        self._maybe_confirm(force=True)
        for w in workers:
            w.sink.close()

    def _put_stop(self, w: _SinkWorker) -> None:
        while w.thread.is_alive():
            try:
                w.queue.put(_STOP, timeout=0.5)
                return
            except queue.Full:
                continue

    def _abort(self, workers: list[_SinkWorker]) -> None:
        for w in workers:
            # Drop what is queued: it is not confirmed, so it is delivered again.
            while True:
                try:
                    w.queue.get_nowait()
                except queue.Empty:
                    break
            self._put_stop(w)
        for w in workers:
            # A worker stuck in a hung call cannot be interrupted; waiting for
            # it would only delay the retry (what it finishes later is harmless:
            # nothing past the checkpoint is confirmed, readers dedupe).
            if not self._stalled(w):
                w.thread.join(5.0)
            try:
                w.sink.close()
            except Exception as exc:  # closing a failed sink may fail too
                log.warning("closing sink %s after a failure: %s", w.sink.name, exc)

    def lag_seconds(self, now: datetime) -> float:
        oldest = self.tracker.oldest_pending_commit()
        return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
