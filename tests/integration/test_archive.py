"""The archive round trip and every tamper case, on file:// and on S3 (moto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.archive.access import verify_key_of
from agent.archive.catalog import entry_key
from agent.archive.reader import ArchiveReader
from agent.archive.sink import ArchiveSink
from agent.archive.verify import verify_archive
from agent.archive.writer import ArchiveWriter
from agent.crypto.datakeys import DataKeyManager, DataKeyOpener
from agent.crypto.keyfiles import (
    generate_key_files,
    load_keyhash_key,
    load_recipient_private,
    load_recipient_public,
    load_signing_key,
)
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder, format_ts
from agent.errors import IntegrityError
from agent.events import ChangeEvent, Position
from connectors.base import EncodedEvent, ObjectStore, TxBegin, TxEnd

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def pos(n: int) -> Position:
    return Position(f"0/{n:X}", (n,))


def write_archive(store: ObjectStore, keys: dict[str, Path], state: Path, txs: int, rows: int, max_bytes: int = 4096) -> list[str]:
    signer = load_signing_key(keys["signing.key"])
    writer = ArchiveWriter(store, signer, verify_key_of(signer), "postgres:shop:changevault", "agent-1")
    writer.open()
    dk = DataKeyManager([load_recipient_public(keys["archive.pub"])], signer, "agent-1")
    sink = ArchiveSink(writer, dk, KeyHasher(load_keyhash_key(keys["keyhash.key"])),
                       {"public.orders": ["customer_id"]}, max_bytes, 3600, None)
    acked: list[int] = []
    sink.open(acked.append)
    enc = EnvelopeEncoder("postgres", "shop")
    ids = []
    for i in range(1, txs + 1):
        ts = T0 + timedelta(seconds=i)
        sink.accept(TxBegin(i, pos(i * 100), str(1000 + i), ts))
        for seq in range(rows):
            ev = ChangeEvent("c", "public", "orders", seq, {"id": i * 100 + seq}, None,
                             {"id": i * 100 + seq, "customer_id": i % 7, "note": "x" * 50})
            eid, env = enc.encode(ev, pos(i * 100), str(1000 + i), format_ts(ts))
            ids.append(eid)
            sink.accept(EncodedEvent(i, eid, ev, env))
        sink.accept(TxEnd(i, pos(i * 100), ts, {"public.orders": rows}))
    sink.flush(10)
    sink.close()
    writer.close()
    assert acked[-1] == txs
    return ids


def reader_for(store: ObjectStore, keys: dict[str, Path], private: Path | None = None) -> ArchiveReader:
    signer = load_signing_key(keys["signing.key"])
    vk = verify_key_of(signer)
    trusted = {vk.key_id: vk}
    opener = DataKeyOpener([load_recipient_private(private or keys["archive.key"])], trusted)
    return ArchiveReader(store, trusted, opener)


def read_ids(reader: ArchiveReader) -> list[str]:
    import json

    segs = [e for e in reader.entries() if e.kind == "segment"]
    return [json.loads(env)["id"] for tx in reader.transactions(segs) for env in tx.events]


def test_round_trip_in_commit_order_across_segments(store: ObjectStore, keys: dict[str, Path], tmp_path: Path) -> None:
    ids = write_archive(store, keys, tmp_path / "state", txs=40, rows=5)
    reader = reader_for(store, keys)
    report = verify_archive(reader, decrypt=True)
    assert report.segments > 3  # small max_bytes: transactions span segments
    assert not report.gaps
    assert read_ids(reader) == ids


def test_nothing_readable_in_the_archive(store: ObjectStore, keys: dict[str, Path], tmp_path: Path) -> None:
    write_archive(store, keys, tmp_path / "state", txs=5, rows=3)
    # Data never appears; schema metadata (table names, the link columns an
    # index covers) is visible in the catalog by design (docs/archive-format.md).
    for info in store.list(""):
        data = store.get(info.key)
        assert b"xxxxxxxxxx" not in data
        assert b'"customer_id":' not in data  # no event field in clear
        if not info.key.startswith("catalog/"):
            assert b"customer_id" not in data


def test_redelivered_transactions_are_dropped(store: ObjectStore, keys: dict[str, Path], tmp_path: Path) -> None:
    ids = write_archive(store, keys, tmp_path / "state", txs=10, rows=2)
    # A second run (after a crash) re-sends from an older checkpoint.
    write_archive(store, keys, tmp_path / "state", txs=10, rows=2)
    assert read_ids(reader_for(store, keys)) == ids


def corrupt(store: ObjectStore, key: str, change: Any) -> None:
    """Rewrite an object behind the store's back (as an attacker with delete rights)."""
    data = store.get(key)
    store.delete(key)
    new = change(data)
    if new is not None:
        store.create(key, new)


def segment_keys(store: ObjectStore) -> list[str]:
    return sorted(o.key for o in store.list("segments/") if o.key.endswith(".seg"))


@pytest.mark.parametrize("case", ["flip", "truncate", "remove", "edit_catalog", "reorder", "replay", "remove_entry"])
def test_tampering_is_detected_without_the_key(store: ObjectStore, keys: dict[str, Path], tmp_path: Path, case: str) -> None:
    write_archive(store, keys, tmp_path / "state", txs=20, rows=5)
    seg = segment_keys(store)[1]
    if case == "flip":
        corrupt(store, seg, lambda d: d[:200] + bytes([d[200] ^ 1]) + d[201:])
    elif case == "truncate":
        corrupt(store, seg, lambda d: d[: len(d) - 100])
    elif case == "remove":
        corrupt(store, seg, lambda d: None)
    elif case == "edit_catalog":
        corrupt(store, entry_key(2), lambda d: d.replace(b'"events":', b'"events":1'))
    elif case == "reorder":
        a, b = store.get(entry_key(2)), store.get(entry_key(3))
        corrupt(store, entry_key(2), lambda d: b)
        corrupt(store, entry_key(3), lambda d: a)
    elif case == "replay":
        a = store.get(entry_key(2))
        corrupt(store, entry_key(3), lambda d: a)
    elif case == "remove_entry":
        corrupt(store, entry_key(3), lambda d: None)
    with pytest.raises(IntegrityError) as info:
        verify_archive(reader_for(store, keys), decrypt=False)
    assert "\n" not in str(info.value)


def test_wrong_private_key_is_an_integrity_error(store: ObjectStore, keys: dict[str, Path], tmp_path: Path) -> None:
    write_archive(store, keys, tmp_path / "state", txs=3, rows=2)
    other = generate_key_files(tmp_path / "other-keys")
    with pytest.raises(IntegrityError, match="wrong archive.key"):
        verify_archive(reader_for(store, keys, private=other["archive.key"]), decrypt=True)


def test_untrusted_signer_is_refused(store: ObjectStore, keys: dict[str, Path], tmp_path: Path) -> None:
    write_archive(store, keys, tmp_path / "state", txs=3, rows=2)
    other = generate_key_files(tmp_path / "other-keys")
    vk = verify_key_of(load_signing_key(other["signing.key"]))
    reader = ArchiveReader(store, {vk.key_id: vk}, None)
    with pytest.raises(IntegrityError, match="not in trusted_signing_keys"):
        verify_archive(reader, decrypt=False)


def test_a_second_writer_is_refused_by_the_lease(store: ObjectStore, keys: dict[str, Path], tmp_path: Path) -> None:
    signer = load_signing_key(keys["signing.key"])
    first = ArchiveWriter(store, signer, verify_key_of(signer), "postgres:shop:cv", "agent-1")
    first.open()
    second = ArchiveWriter(store, signer, verify_key_of(signer), "postgres:shop:cv", "agent-2")
    from agent.errors import ServiceError

    with pytest.raises(ServiceError, match="leased to"):
        second.open()
    first.close()
    second.open()  # released: the next agent need not wait
    second.close()
