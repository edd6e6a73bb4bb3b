"""Large transactions: protocol 2 streaming, spilled to disk, bounded memory.

A dedicated server with logical_decoding_work_mem=64kB makes PostgreSQL
stream every transaction bigger than that, so these tests see Stream Start /
Stop / Commit / Abort for real.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import Transaction
from connectors.postgres.source import PostgresSource
from tests.integration.test_pg_source import drain, make_settings
from tests.servers.postgres import PostgresServer


@pytest.fixture(scope="module")
def small_decoding_mem(server_log_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(
        log_dir=server_log_dir,
        extra_settings={"logical_decoding_work_mem": "64kB"},
        name="pg-streaming",
    )
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def _source(server: PostgresServer, dbname: str, state_dir: Path) -> PostgresSource:
    server.create_database(dbname)
    server.execute("CREATE TABLE big (id int PRIMARY KEY, tag text, pad text)", dbname)
    settings = make_settings(server.dsn(dbname), state_dir, tables=["public.big"])
    source = PostgresSource(settings, state_dir, spill_memory_budget=256 * 1024)
    reader = source.start(None)
    assert reader is not None
    reader.close()
    return source


def test_streamed_200k_row_transaction_in_bounded_memory(
    small_decoding_mem: PostgresServer, tmp_path: Path
) -> None:
    source = _source(small_decoding_mem, "stream200k", tmp_path / "state")
    rows = 200_000
    try:
        small_decoding_mem.execute(
            "INSERT INTO big SELECT g, 'a', repeat('p', 40) FROM generate_series(1, %s) g",
            "stream200k",
            params=(rows,),
        )
        tracemalloc.start()
        try:
            count = 0
            ids_ok = True
            spilled = False
            for item in source.stream():
                if not isinstance(item, Transaction):
                    continue
                spilled = any((tmp_path / "state" / "spill").glob("xid-*.spill"))
                for n, event in enumerate(item.events, start=1):
                    ids_ok = ids_ok and event.after is not None and event.after["id"] == n
                    count += 1
                source.confirm(item.position)
                break
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert source.assembler.streams_seen > 1, "expected PostgreSQL to stream the transaction"
        assert spilled, "expected the streamed transaction to spill to disk"
        assert count == rows and ids_ok
        # 200k rows held in memory would take well over 100 MB.
        assert peak < 16 * 1024 * 1024, f"peak traced memory {peak} bytes"
        assert not list((tmp_path / "state" / "spill").glob("xid-*.spill"))
    finally:
        source.close()


def test_aborted_stream_and_rollback_to_savepoint(
    small_decoding_mem: PostgresServer, tmp_path: Path
) -> None:
    db = "streamabort"
    source = _source(small_decoding_mem, db, tmp_path / "state")
    try:
        with small_decoding_mem.connect(db) as conn:
            conn.autocommit = False
            conn.execute(
                "INSERT INTO big SELECT g, 'aborted', repeat('p', 40)"
                " FROM generate_series(1, 30000) g"
            )
            conn.rollback()
            conn.execute(
                "INSERT INTO big SELECT g, 'kept', repeat('p', 40) FROM generate_series(1, 20000) g"
            )
            conn.execute("SAVEPOINT s1")
            conn.execute(
                "INSERT INTO big SELECT g, 'dropped', repeat('p', 40)"
                " FROM generate_series(20001, 40000) g"
            )
            conn.execute("SAVEPOINT s2")
            conn.execute(
                "INSERT INTO big SELECT g, 'dropped', repeat('p', 40)"
                " FROM generate_series(40001, 45000) g"
            )
            conn.execute("ROLLBACK TO SAVEPOINT s1")
            conn.execute(
                "INSERT INTO big SELECT g, 'after', repeat('p', 40)"
                " FROM generate_series(50001, 60000) g"
            )
            conn.execute("SAVEPOINT s3")
            conn.execute("UPDATE big SET tag = 'released' WHERE id <= 100")
            conn.execute("RELEASE SAVEPOINT s3")
            conn.commit()
        small_decoding_mem.execute("INSERT INTO big VALUES (-1, 'marker', '')", db)
        got = drain(source, lambda c: any(e.key == {"id": -1} for e in c.events), timeout=120)
        assert source.assembler.streams_seen > 1
        txs = got.transactions
        assert len(txs) == 2, [len(evs) for _p, _x, evs in txs]
        events = txs[0][2]
        tags: dict[str, int] = {}
        for e in events:
            assert e.after is not None
            tag = e.after["tag"]
            tags[tag] = tags.get(tag, 0) + 1
        assert tags == {"kept": 20000, "after": 10000, "released": 100}
        assert [e.seq for e in events] == list(range(len(events)))
    finally:
        source.close()


def test_many_interleaved_streams(small_decoding_mem: PostgresServer, tmp_path: Path) -> None:
    """Two streamed transactions in flight at once commit in commit order."""
    db = "streaminterleave"
    source = _source(small_decoding_mem, db, tmp_path / "state")
    try:
        c1: Any = small_decoding_mem.connect(db)
        c2: Any = small_decoding_mem.connect(db)
        with c1, c2:
            c1.autocommit = c2.autocommit = False
            for part in range(3):
                c1.execute(
                    "INSERT INTO big SELECT g, 'one', repeat('p', 40)"
                    " FROM generate_series(%s::int, %s::int) g",
                    (part * 5000 + 1, part * 5000 + 5000),
                )
                c2.execute(
                    "INSERT INTO big SELECT g, 'two', repeat('p', 40)"
                    " FROM generate_series(%s::int, %s::int) g",
                    (100000 + part * 5000 + 1, 100000 + part * 5000 + 5000),
                )
            c2.commit()
            c1.commit()
        got = drain(source, lambda c: len(c.transactions) >= 2, timeout=120)
        first, second = got.transactions[0][2], got.transactions[1][2]
        assert {e.after["tag"] for e in first if e.after} == {"two"}
        assert {e.after["tag"] for e in second if e.after} == {"one"}
        assert len(first) == len(second) == 15000
        assert got.transactions[0][0].sort_key < got.transactions[1][0].sort_key
    finally:
        source.close()
