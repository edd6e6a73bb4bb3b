"""One row out of a transaction that spans most of the archive, read sparsely.

An entity restore opens only the segment whose index holds the row: the
transaction's identity comes from the segment's catalog entry (`continues`),
indexes are range-read a chunk at a time, and where the replay stops is
taken from the catalog (`last_txid`) instead of reading the last segment.
From a base snapshot, likewise, only the snapshot parts whose index holds the
entity's rows are read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench import workload
from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.test_restore_postgres import checkpoint_lsn, wait_durable

READ = re.compile(r"read \d+ objects, (\d+) bytes of segments, indexes and snapshot parts "
                  r"\(of (\d+) bytes in the archive\)")
SEGMENTS = re.compile(r"from (\d+) of (\d+) segments")
STOPPED = re.compile(r"stopped at position (\S+) \(commit time (\S+), after transaction (\S+)\)")


def _row(dsn: str, table: str, row_id: int) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT t::text FROM {table} t WHERE id = %s", (row_id,)).fetchall()


def test_entity_inside_a_long_transaction_reads_one_segment(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        workload.prepare(conn)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_sparse", "publication": "cv_sparse",
                "tables": ["public.bench_rows"]},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    doc = yaml.safe_load(config.read_text())
    doc["archive"]["segment_max_bytes"] = 1024 * 1024  # the big transaction spans ~12 segments
    config.write_text(yaml.safe_dump(doc))
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            workload.insert_one_transaction(conn, 1, 20000)
            conn.execute("UPDATE bench_rows SET name = 'after' WHERE id = 7")  # a later, small tx
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        wait_durable(dsn, state)
    finally:
        assert agent.stop() == 0, agent.log()

    def restore(schema: str, *extra: str, to: tuple[str, str] = ("--to-position", end)) -> str:
        proc = cli(["restore", "-c", str(config), *to, "--target-dsn", dsn,
                    "--target-schema", schema, "--private-key", str(keys["archive.key"]), *extra])
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc.stdout

    whole = restore("r_whole")
    one = restore("r_one", "--entity", "public.bench_rows.id=12345")
    assert _row(dsn, "r_one.bench_rows", 12345) == _row(dsn, "public.bench_rows", 12345) != []
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM r_one.bench_rows").fetchone() == (1,)

    read, total = map(int, SEGMENTS.search(one).groups())  # type: ignore[union-attr]
    assert total > 8 and read == 1, one
    got, size = map(int, READ.search(one).groups())  # type: ignore[union-attr]
    # One segment, and a few KiB of each index rather than whole indexes
    # (they are ~1/6 of the archive: 8 bytes per row beside ~45 of data).
    assert got < size / total + total * 3 * 1024, one
    # The same stop as the whole restore, though the last segment was not read.
    assert STOPPED.search(one).groups() == STOPPED.search(whole).groups(), (one, whole)  # type: ignore[union-attr]
    # A time target reads the last segment too: commit times may be slightly out
    # of commit order, so the exact boundary is found in the data.
    by_time = restore("r_time", "--entity", "public.bench_rows.id=12345",
                      to=("--to", "2999-01-01T00:00:00"))
    assert SEGMENTS.search(by_time).group(1) == "2", by_time  # type: ignore[union-attr]
    assert STOPPED.search(by_time).groups() == STOPPED.search(whole).groups()  # type: ignore[union-attr]

    # The row the later transaction changed, found through the same indexes.
    restore("r_seven", "--entity", "public.bench_rows.id=7")
    assert _row(dsn, "r_seven.bench_rows", 7) == _row(dsn, "public.bench_rows", 7)
    assert "after" in _row(dsn, "r_seven.bench_rows", 7)[0][0]

    # A base snapshot of the 20,000 rows, in parts of ~1 MiB: the entity comes
    # from the one part whose index holds it.
    proc = cli(["snapshot", "-c", str(config)], timeout=300)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    later = ("--to", "2999-01-01T00:00:00")  # after the snapshot
    from_snapshot = restore("r_snap", "--entity", "public.bench_rows.id=12345", to=later)
    assert _row(dsn, "r_snap.bench_rows", 12345) == _row(dsn, "public.bench_rows", 12345)
    snap_id = re.search(r"from snapshot (\S+) at", from_snapshot)
    assert snap_id and snap_id.group(1) not in one, from_snapshot  # the new snapshot was used
    got, size = map(int, READ.search(from_snapshot).groups())  # type: ignore[union-attr]
    assert got < size / 8, from_snapshot
    whole_snap = restore("r_snap_whole", to=later)
    w_got, _ = map(int, READ.search(whole_snap).groups())  # type: ignore[union-attr]
    assert got < w_got / 4, (from_snapshot, whole_snap)
