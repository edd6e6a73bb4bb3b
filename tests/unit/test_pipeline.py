"""Pipeline logic with in-process sources and sinks (the real ones have their own tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from agent.checkpoint import Durable
from agent.crypto.keyfiles import KeyhashKey
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder
from agent.errors import ServiceError
from agent.events import ChangeEvent, Heartbeat, Position, Transaction
from agent.pipeline import Pipeline, PipelineOptions
from connectors.base import EncodedEvent, SinkItem, TxEnd

TS = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def pos(n: int) -> Position:
    return Position(f"0/{n:X}", (n,))


def tx(n: int, rows: int = 2) -> Transaction:
    events = (
        ChangeEvent("c", "public", "t", seq, {"id": n * 1000 + seq}, None, {"id": n * 1000 + seq})
        for seq in range(rows)
    )
    return Transaction(pos(n * 100), str(n), TS, events)


class ListSource:
    def __init__(self, items: list[Transaction | Heartbeat], stop: threading.Event | None = None):
        self.items = items
        self.confirmed: list[Position] = []
        self.read = 0
        self.stop = stop

    def stream(self) -> Iterator[Transaction | Heartbeat]:
        for item in self.items:
            self.read += 1
            yield item
        while self.stop is not None and not self.stop.is_set():
            yield Heartbeat(self.items[-1].position, TS)
            time.sleep(0.01)

    def confirm(self, position: Position) -> None:
        self.confirmed.append(position)


class RecordingSink:
    def __init__(self, name: str, delay: float = 0.0, fail_at: int | None = None):
        self.name = name
        self.delay = delay
        self.fail_at = fail_at
        self.items: list[SinkItem] = []
        self.ack: Callable[[int], None] = lambda i: None
        self.closed = False

    def open(self, ack: Callable[[int], None]) -> None:
        self.ack = ack

    def accept(self, item: SinkItem) -> None:
        time.sleep(self.delay)
        if isinstance(item, TxEnd) and item.index == self.fail_at:
            raise ServiceError(f"{self.name} is down")
        self.items.append(item)
        if isinstance(item, TxEnd):
            self.ack(item.index)

    def tick(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def run_pipeline(source: ListSource, sinks: list[RecordingSink], stop: threading.Event, **opts: float) -> tuple[Pipeline, list[Durable]]:
    saved: list[Durable] = []
    p = Pipeline(
        source,  # type: ignore[arg-type]
        sinks,  # type: ignore[arg-type]
        EnvelopeEncoder("postgres", "shop"),
        saved.append,
        stop,
        options=PipelineOptions(queue_batches=int(opts.get("queue", 64)), batch_items=int(opts.get("batch", 256)), confirm_interval=0),
    )
    p.run()
    return p, saved


def test_every_event_reaches_every_sink_in_order_and_last_position_is_confirmed() -> None:
    source = ListSource([tx(i) for i in range(1, 51)])
    sinks = [RecordingSink("kafka"), RecordingSink("archive", delay=0.0005)]
    _, saved = run_pipeline(source, sinks, threading.Event())
    for s in sinks:
        ids = [i.id for i in s.items if isinstance(i, EncodedEvent)]
        assert len(ids) == 100
        assert ids[0] == "postgres:shop:0/64:0"
        assert s.closed
    assert source.confirmed[-1] == pos(5000)
    assert saved[-1].position == pos(5000)


def test_stop_flag_ends_after_the_current_transaction_and_drains() -> None:
    stop = threading.Event()
    source = ListSource([tx(i) for i in range(1, 4)], stop=stop)
    sinks = [RecordingSink("a")]
    t = threading.Thread(target=lambda: run_pipeline(source, sinks, stop))
    t.start()
    time.sleep(0.3)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    assert source.confirmed[-1] == pos(300)


def test_backpressure_bounds_what_is_read_ahead_of_a_slow_sink() -> None:
    stop = threading.Event()
    stop.set()
    n = 400
    source = ListSource([tx(i, rows=1) for i in range(1, n + 1)])
    slow = RecordingSink("slow", delay=0.002)
    observed: list[int] = []

    def watch() -> None:
        while len(slow.items) < n * 3 - 3:
            observed.append(source.read * 3 - len(slow.items))
            time.sleep(0.01)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    run_pipeline(source, [slow], threading.Event(), queue=16)
    # One batch per transaction (3 items): in flight never exceed the queued
    # batches plus the one the sink is working on and the one being encoded.
    assert max(observed) <= (16 + 2) * 3


def test_a_large_transaction_travels_in_bounded_batches() -> None:
    source = ListSource([tx(1, rows=5000)])
    sink = RecordingSink("a")
    run_pipeline(source, [sink], threading.Event(), queue=4, batch=100)
    assert len([i for i in sink.items if isinstance(i, EncodedEvent)]) == 5000


def test_failing_sink_raises_and_nothing_past_its_durable_prefix_is_confirmed() -> None:
    source = ListSource([tx(i) for i in range(1, 21)])
    good = RecordingSink("kafka")
    bad = RecordingSink("archive", fail_at=10)
    with pytest.raises(ServiceError, match="archive is down"):
        run_pipeline(source, [good, bad], threading.Event())
    assert all(p.sort_key[0] <= 900 for p in source.confirmed)
    assert good.closed and bad.closed


def test_heartbeats_advance_the_confirmed_position_when_idle() -> None:
    source = ListSource([tx(1), Heartbeat(pos(999), TS)])
    _, saved = run_pipeline(source, [RecordingSink("a")], threading.Event())
    assert source.confirmed[-1] == pos(999)
    assert saved[-1].commit_ts is None


def test_row_key_is_computed_once_for_every_sink() -> None:
    """Given a hasher, each row change carries its keyed row hash (what the Kafka
    sink sends as message key and the archive indexes); a truncate carries none."""
    hasher = KeyHasher(KeyhashKey(bytes(range(32))))
    events = [
        ChangeEvent("c", "public", "t", 0, {"id": 1}, None, {"id": 1}),
        ChangeEvent("d", "public", "t", 1, {"id": 2}, {"id": 2}, None),
        ChangeEvent("t", "public", "t", 2, None, None, None),
    ]
    source = ListSource([Transaction(pos(100), "1", TS, iter(events))])
    sinks = [RecordingSink("a"), RecordingSink("b")]
    saved: list[Durable] = []
    Pipeline(source, sinks, EnvelopeEncoder("postgres", "shop"), saved.append,  # type: ignore[arg-type]
             threading.Event(), options=PipelineOptions(confirm_interval=0), hasher=hasher).run()
    for sink in sinks:
        got = [i.row_key for i in sink.items if isinstance(i, EncodedEvent)]
        assert got == [hasher.row_key("public", "t", {"id": 1}),
                       hasher.row_key("public", "t", {"id": 2}), None]
    a = [i for i in sinks[0].items if isinstance(i, EncodedEvent)]
    b = [i for i in sinks[1].items if isinstance(i, EncodedEvent)]
    assert all(x is y for x, y in zip(a, b, strict=True))  # one object, shared
