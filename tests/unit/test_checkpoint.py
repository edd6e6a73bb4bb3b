from __future__ import annotations

import json
import os
import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.checkpoint import AckTracker, Checkpoint, CheckpointStore
from agent.errors import ServiceError, UsageError
from agent.events import Position

TS = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


def pos(n: int) -> Position:
    return Position(text=f"0/{n:X}", sort_key=(n,))


def test_nothing_durable_until_every_sink_has_it() -> None:
    t = AckTracker(["kafka", "archive"])
    t.register(1, pos(10), TS)
    t.register(2, pos(20), TS)
    t.complete("kafka", 1)
    t.complete("kafka", 2)
    assert t.durable is None
    t.complete("archive", 2)  # out of order: 1 still missing in archive
    assert t.durable is None
    t.complete("archive", 1)
    assert t.durable is not None and t.durable.position == pos(20)


def test_gap_holds_back_later_completions() -> None:
    t = AckTracker(["s"])
    for i in range(1, 6):
        t.register(i, pos(i * 10), TS)
    for i in (2, 3, 5):
        t.complete("s", i)
    assert t.durable is None
    t.complete("s", 1)
    assert t.durable is not None and t.durable.index == 3
    assert t.oldest_pending_commit() == TS
    t.complete("s", 4)
    assert t.durable.index == 5
    assert t.oldest_pending_commit() is None


def test_heartbeat_is_durable_once_everything_before_is() -> None:
    t = AckTracker(["s"])
    t.register(1, pos(10), TS)
    t.register(2, pos(15), None)  # heartbeat
    assert t.durable is None
    t.complete("s", 1)
    assert t.durable is not None and t.durable.position == pos(15)
    t.register(3, pos(30), None)
    assert t.durable.position == pos(30)


def test_complete_through() -> None:
    t = AckTracker(["a", "b"])
    for i in range(1, 4):
        t.register(i, pos(i), TS)
    t.complete_through("a", 3)
    t.complete_through("b", 2)
    assert t.durable is not None and t.durable.index == 2


def test_concurrent_random_completion_order_reaches_the_last() -> None:
    sinks = ["a", "b", "c"]
    t = AckTracker(sinks)
    n = 2000
    for i in range(n):
        t.register(i, pos(i), TS)

    def worker(sink: str) -> None:
        order = list(range(n))
        random.Random(sink).shuffle(order)
        for i in order:
            t.complete(sink, i)

    threads = [threading.Thread(target=worker, args=(s,)) for s in sinks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.durable is not None and t.durable.index == n - 1
    assert t.wait_idle(0.1)


def test_indexes_must_increase() -> None:
    t = AckTracker(["s"])
    t.register(5, pos(5), TS)
    with pytest.raises(ValueError):
        t.register(5, pos(6), TS)


def test_checkpoint_round_trip_and_mode(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    assert store.load("postgres:shop:changevault") is None
    p = Position("gtid:0-1-5", (3, 400), (("gtid", "0-1-5"), ("file", "bin.000003")))
    cp = Checkpoint("postgres:shop:changevault", p, TS, datetime.now(UTC))
    store.save(cp)
    assert store.load("postgres:shop:changevault") == cp
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert not [f for f in store.path.parent.iterdir() if f.name.endswith(".tmp")]


def test_checkpoint_of_another_source_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint("postgres:a:s", pos(1), None, datetime.now(UTC)))
    with pytest.raises(UsageError, match="belongs to postgres:a:s"):
        store.load("postgres:b:s")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(UsageError, match="not a changevault checkpoint"):
        CheckpointStore(tmp_path).load("x")


def test_failed_write_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    old = Checkpoint("s", pos(1), None, datetime.now(UTC))
    store.save(old)
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() == 0:
            # root ignores directory modes; simulate a full disk with a directory in the way
            os.chmod(tmp_path, 0o700)
            (tmp_path / f".checkpoint.json.{os.getpid()}.tmp").mkdir()
        with pytest.raises(ServiceError, match="cannot write"):
            store.save(Checkpoint("s", pos(2), None, datetime.now(UTC)))
    finally:
        os.chmod(tmp_path, 0o700)
    assert store.load("s") == old


def test_each_sink_hears_its_own_commit_to_durable_latency() -> None:
    heard: list[tuple[str, int]] = []
    t = AckTracker(["kafka", "archive"], lambda sink, xs: heard.extend((sink, len(xs)) for _ in xs))
    now = datetime.now(UTC)
    t.register(1, pos(10), now)
    t.register(2, pos(15), None)  # a heartbeat has no commit: no latency
    t.register(3, pos(30), now)
    t.complete_through("kafka", 3)
    assert heard == [("kafka", 2), ("kafka", 2)]
    t.complete_through("kafka", 3)  # told again: nothing new to report
    t.complete("archive", 1)
    assert heard[2:] == [("archive", 1)]
    t.complete_through("archive", 3)
    assert heard[3:] == [("archive", 1)]
    assert t.durable is not None and t.durable.index == 3


def test_latency_is_seconds_since_commit() -> None:
    seconds: list[float] = []
    t = AckTracker(["kafka"], lambda _sink, xs: seconds.extend(xs))
    t.register(1, pos(10), datetime.fromtimestamp(datetime.now(UTC).timestamp() - 2.0, UTC))
    t.complete("kafka", 1)
    assert len(seconds) == 1 and 1.9 < seconds[0] < 5.0
