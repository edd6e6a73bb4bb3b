"""One contract for every ObjectStore backend: file:// and s3:// (on moto).

The same tests run against both, so the archive can move between them and a
behaviour that one backend gets wrong shows up as a difference here.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import UsageError
from connectors.base import ObjectExists, ObjectStore
from connectors.storage import (
    ArchiveLease,
    LeaseHeld,
    LeaseLost,
    ObjectMissing,
    open_object_store,
    probe_conditional_put,
)


@pytest.fixture(params=["file", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield open_object_store((tmp_path / "archive").as_uri())
        return
    s3_server: Any = request.getfixturevalue("s3_server")  # only the s3 variant needs it
    # moto accepts any credentials; the store finds them the usual AWS way.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cv-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cv-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"cv-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    yield open_object_store(f"s3://{bucket}/archive/one", s3_server.endpoint_url)


def test_create_get_exists(store: ObjectStore) -> None:
    assert not store.exists("segments/000001")
    store.create("segments/000001", b"hello world")
    assert store.exists("segments/000001")
    assert store.get("segments/000001") == b"hello world"
    store.create("empty", b"")
    assert store.get("empty") == b""


def test_get_missing_is_object_missing(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing, match="nope"):
        store.get("nope")
    with pytest.raises(ObjectMissing):
        store.get_range("nope", 0, 4)
    with pytest.raises(ObjectMissing):
        store.get_range("nope", 0, 0)


def test_get_range(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    store.create("r", data)
    assert store.get_range("r", 0, 10) == data[:10]
    assert store.get_range("r", 100, 50) == data[100:150]
    assert store.get_range("r", 1000, 100) == data[1000:]  # past the end: shorter
    assert store.get_range("r", 5000, 10) == b""
    assert store.get_range("r", 3, 0) == b""


def test_list_prefix_sorted(store: ObjectStore) -> None:
    keys = ["b/2", "a/1", "a/10", "a-x", "a/2/z", "c", "ab"]
    for key in keys:
        store.create(key, key.encode())
    assert [o.key for o in store.list("")] == sorted(keys, key=str.encode)
    assert [o.key for o in store.list("a/")] == ["a/1", "a/10", "a/2/z"]
    assert [o.key for o in store.list("a")] == ["a-x", "a/1", "a/10", "a/2/z", "ab"]
    assert [o.key for o in store.list("a/1")] == ["a/1", "a/10"]
    assert [o.key for o in store.list("zz")] == []
    assert {o.key: o.size for o in store.list("b/")} == {"b/2": 3}


def test_create_twice_same_bytes_is_success(store: ObjectStore) -> None:
    store.create("k", b"same")
    store.create("k", b"same")  # a retry after an ambiguous failure
    assert store.get("k") == b"same"


def test_create_twice_different_bytes_is_refused(store: ObjectStore) -> None:
    store.create("k", b"first")
    with pytest.raises(ObjectExists):
        store.create("k", b"second")
    assert store.get("k") == b"first"


def test_concurrent_creators_exactly_one_wins(store: ObjectStore) -> None:
    n = 8
    barrier = threading.Barrier(n)
    won: list[int] = []
    lost: list[int] = []
    errors: list[BaseException] = []

    def creator(i: int) -> None:
        barrier.wait()
        try:
            store.create("contended", f"writer {i}".encode())
            won.append(i)
        except ObjectExists:
            lost.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(won) == 1 and len(lost) == n - 1
    assert store.get("contended") == f"writer {won[0]}".encode()


def test_large_object_from_file(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(12 * 1024 * 1024 + 7)
    src.write_bytes(data)
    store.create_from_file("big/segment", src)
    store.create_from_file("big/segment", src)  # retried: same bytes
    got = store.get("big/segment")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert store.get_range("big/segment", 5_000_000, 1000) == data[5_000_000:5_001_000]
    other = tmp_path / "other.bin"
    other.write_bytes(data[:-1] + b"x")
    with pytest.raises(ObjectExists):
        store.create_from_file("big/segment", other)


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "nul\x00", "a/", "x\\y", ".cv-tmp-1"]
)
def test_key_validation(store: ObjectStore, key: str) -> None:
    with pytest.raises(UsageError):
        store.create(key, b"x")
    with pytest.raises(UsageError):
        store.get(key)


def test_delete_for_expire(store: ObjectStore) -> None:
    store.create("old", b"x")
    store.delete("old")
    assert not store.exists("old")
    store.delete("old")  # idempotent
    store.create("old", b"y")  # the key is free again
    assert store.get("old") == b"y"


def test_probe_conditional_put(store: ObjectStore) -> None:
    result = probe_conditional_put(store)
    assert result.ok, result.detail
    assert [o.key for o in store.list("_probe/")]  # the probe object stays


# ----------------------------------------------------------------------- lease


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_lease_exclusive_then_takeover(store: ObjectStore) -> None:
    clock = _Clock()
    a = ArchiveLease(store, "main", "agent-a", ttl=60, grace=5, clock=clock, host="h1", pid=1)
    b = ArchiveLease(store, "main", "agent-b", ttl=60, grace=5, clock=clock, host="h2", pid=2)
    first = a.acquire()
    assert first.epoch == 0

    clock.now += 30
    with pytest.raises(LeaseHeld, match=r"agent-a \(host h1, pid 1\) until .*Z"):
        b.acquire()
    renewed = a.renew()
    assert renewed.epoch == 1 and renewed.expires_at == clock.now + 60

    clock.now += 64  # inside the grace window: still refused
    with pytest.raises(LeaseHeld):
        b.acquire()
    clock.now += 2  # a stopped renewing more than ttl + grace ago
    taken = b.acquire()
    assert taken.epoch == 2 and taken.owner_id == "agent-b"

    with pytest.raises(LeaseLost, match="taken over by agent agent-b"):
        a.renew()
    assert a.held is None
    assert store.list("leases/main/") is not None
    assert [o.key for o in store.list("leases/main/")] == [
        "leases/main/000000000000",
        "leases/main/000000000001",
        "leases/main/000000000002",
    ]


def test_lease_release_lets_next_agent_in_at_once(store: ObjectStore) -> None:
    clock = _Clock()
    a = ArchiveLease(store, "main", "agent-a", ttl=600, clock=clock)
    b = ArchiveLease(store, "main", "agent-b", ttl=600, clock=clock)
    a.acquire()
    a.release()
    assert b.acquire().owner_id == "agent-b"


def test_lease_takeover_race_has_one_winner(store: ObjectStore) -> None:
    clock = _Clock()
    ArchiveLease(store, "main", "old", ttl=10, clock=clock).acquire()
    clock.now += 100
    n = 6
    barrier = threading.Barrier(n)
    winners: list[str] = []
    refused: list[str] = []

    def contend(i: int) -> None:
        lease = ArchiveLease(store, "main", f"agent-{i}", ttl=60, clock=clock)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease.owner_id)
        except LeaseHeld:
            refused.append(lease.owner_id)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == n - 1
    current = ArchiveLease(store, "main", "reader", ttl=1, clock=clock).current()
    assert current is not None and current.owner_id == winners[0]


def test_lease_ensure_valid_after_missed_renewals(store: ObjectStore) -> None:
    clock = _Clock()
    a = ArchiveLease(store, "main", "agent-a", ttl=60, clock=clock)
    a.acquire()
    a.ensure_valid()
    clock.now += 61
    with pytest.raises(LeaseLost, match="expired"):
        a.ensure_valid()
