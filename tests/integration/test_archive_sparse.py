"""Reading a sparse choice of segments (what an entity restore does).

A transaction may span many segments; each segment's catalog entry names the
transaction it continues, so a reader can start in the middle and learn from
the catalog alone whether that transaction ended or was cut by a crash.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from agent.archive.access import verify_key_of
from agent.archive.catalog import CatalogEntry
from agent.archive.reader import ArchiveReader, segment_entries
from agent.archive.sink import ArchiveSink
from agent.archive.writer import ArchiveWriter
from agent.crypto.datakeys import DataKeyManager
from agent.crypto.keyfiles import load_keyhash_key, load_recipient_public, load_signing_key
from agent.crypto.keyhash import KeyHasher
from agent.envelope import EnvelopeEncoder, format_ts
from agent.events import ChangeEvent
from connectors.base import EncodedEvent, ObjectStore, TxBegin, TxEnd
from tests.integration.test_archive import T0, pos, reader_for


def _sink(store: ObjectStore, keys: dict[str, Path], agent: str) -> tuple[ArchiveSink, ArchiveWriter]:
    signer = load_signing_key(keys["signing.key"])
    writer = ArchiveWriter(store, signer, verify_key_of(signer), "postgres:shop:changevault", agent)
    writer.open()
    dk = DataKeyManager([load_recipient_public(keys["archive.pub"])], signer, agent)
    sink = ArchiveSink(writer, dk, KeyHasher(load_keyhash_key(keys["keyhash.key"])), {}, 2048, 3600, None)
    sink.open(lambda i: None)
    return sink, writer


def _tx(sink: ArchiveSink, n: int, rows: int, end: bool = True) -> list[int]:
    """Transaction n with `rows` inserts of ids n*10000+seq; the ids sent."""
    enc = EnvelopeEncoder("postgres", "shop")
    ts = T0 + timedelta(seconds=n)
    sink.accept(TxBegin(n, pos(n * 100), str(1000 + n), ts))
    ids = []
    for seq in range(rows):
        row_id = n * 10000 + seq
        ev = ChangeEvent("c", "public", "orders", seq, {"id": row_id}, None,
                         {"id": row_id, "note": f"{row_id:08d}" * 8})
        eid, env = enc.encode(ev, pos(n * 100), str(1000 + n), format_ts(ts))
        sink.accept(EncodedEvent(n, eid, ev, env))
        ids.append(row_id)
    if end:
        sink.accept(TxEnd(n, pos(n * 100), ts, {"public.orders": rows}))
    return ids


def _read(reader: ArchiveReader, segs: list[CatalogEntry], sparse: bool) -> list[tuple[str, list[int]]]:
    return [
        (tx.txid, [json.loads(env)["after"]["id"] for env in tx.events])
        for tx in reader.transactions(segs, sparse=sparse)
    ]


def _ids_in(reader: ArchiveReader, seg: CatalogEntry) -> set[int]:
    return {i for _, ids in _read(reader, [seg], sparse=True) for i in ids}


def test_a_segment_inside_a_long_transaction_is_read_alone(store: ObjectStore, keys: dict[str, Path]) -> None:
    sink, writer = _sink(store, keys, "agent-1")
    _tx(sink, 1, 5)
    big = _tx(sink, 2, 400)  # spans many 2 KiB segments
    _tx(sink, 3, 5)
    sink.flush(10)
    writer.close()
    reader = reader_for(store, keys)
    segs = segment_entries(reader.entries())
    assert len(segs) > 10
    middle = [s for s in segs if s.body["continues"] and s.body["tx_ends"] == 0]
    assert len(middle) > 5
    assert all(s.body["continues"]["txid"] == "1002" for s in middle)

    # One middle segment alone: the transaction comes from the catalog, complete
    # because a later segment of the chain ends it; only this segment's events.
    one = middle[len(middle) // 2]
    got = _read(reader, [one], sparse=True)
    assert len(got) == 1 and got[0][0] == "1002"
    assert 0 < len(got[0][1]) < len(big) and set(got[0][1]) <= set(big)

    # Two segments of the same transaction with a gap between: one transaction.
    a, b = middle[1], middle[4]
    got = _read(reader, [a, b], sparse=True)
    assert [t for t, _ in got] == ["1002"]
    assert got[0][1] == sorted(_ids_in(reader, a) | _ids_in(reader, b))

    # The middle of the big one, then the last segment: both transactions, in order.
    got = _read(reader, [one, segs[-1]], sparse=True)
    assert [t for t, _ in got] == ["1002", "1003"]

    # Without `sparse`, a lone middle segment yields nothing (no begin seen), and
    # a contiguous read is unchanged.
    assert _read(reader, [one], sparse=False) == []
    assert _read(reader, segs, sparse=True) == _read(reader, segs, sparse=False)
    assert [t for t, _ in _read(reader, segs, sparse=False)] == ["1001", "1002", "1003"]


def test_a_transaction_cut_by_a_crash_is_dropped(store: ObjectStore, keys: dict[str, Path]) -> None:
    first, writer = _sink(store, keys, "agent-1")
    _tx(first, 1, 5)
    _tx(first, 2, 200, end=False)  # segments closed mid-transaction, then the crash
    writer.close()  # the open segment is lost with the process
    second, writer = _sink(store, keys, "agent-2")
    redelivered = _tx(second, 2, 200)  # the redelivered copy begins afresh
    second.flush(10)
    writer.close()
    reader = reader_for(store, keys)
    segs = segment_entries(reader.entries())
    first_run_tail = max(
        (s for s in segs if s.agent_id == "agent-1"), key=lambda s: s.seq
    )
    assert first_run_tail.body["continues"] is not None
    # Read alone, the first run's last segment holds part of transaction 2 whose
    # chain of continuing segments ends without an end record: dropped.
    assert _read(reader, [first_run_tail], sparse=True) == []
    # The redelivered copy's segments give the whole transaction once.
    later = [s for s in segs if s.agent_id == "agent-2"]
    got = _read(reader, [first_run_tail, *later], sparse=True)
    assert [t for t, _ in got] == ["1002"] and got[0][1] == redelivered
