"""The bench's table shape restores and verifies: numeric(12,2), timestamptz, jsonb, date.

The bench saw `restore` fail its own read-back checksum (exit 4) on 200,000
rows of bench_rows. Here: a few thousand rows of the same shape, some in the
snapshot, some in one large transaction the walsender streams (protocol v2,
a tiny logical_decoding_work_mem), some updated, through the real CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from bench import workload
from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.test_restore_postgres import checkpoint_lsn, wait_durable


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT t::text FROM {table} t ORDER BY id").fetchall()


def test_bench_rows_restore_and_verify(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        workload.prepare(conn)
        # Streamed in chunks by the walsender, as the bench's big transaction is.
        conn.execute(f'ALTER DATABASE "{pg_database.name}" SET logical_decoding_work_mem = \'64kB\'')
        workload.insert_one_transaction(conn, 1, 1000)  # in the snapshot
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_bench_shape",
                "publication": "cv_bench_shape"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            workload.insert_one_transaction(conn, 1001, 40000)
            conn.execute(
                "UPDATE bench_rows SET amount = amount + 1, updated_at = updated_at + interval '1.5 s',"
                " attrs = attrs || '{\"seen\": true, \"a\": [1.5, 2]}' WHERE id % 7 = 0"
            )
            conn.execute("DELETE FROM bench_rows WHERE id % 11 = 0")
            # Values whose text forms are easy to get wrong both ways.
            conn.execute(
                "INSERT INTO bench_rows VALUES (900001, 'x', 0.00, '2024-06-30 23:59:59.999999+05:30',"
                " true, '{\"b\": 1.0, \"a\": {\"z\": 1000, \"y\": null}, \"\": \"\\u00e9\"}', 0,"
                " '0044-03-15 BC'), (900002, 'y', -1.5, '1999-12-31 23:59:59.1-08', false, '[]', 1,"
                " 'infinity')"
            )
        wait_durable(dsn, state)
    finally:
        assert agent.stop() == 0, agent.log()
    proc = cli(["restore", "-c", str(config), "--to", "2999-01-01T00:00:00", "--target-dsn", dsn,
                "--target-schema", "r_bench", "--private-key", str(keys["archive.key"])])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "MISMATCH" not in proc.stdout, proc.stdout
    assert _rows(dsn, "r_bench.bench_rows") == _rows(dsn, "public.bench_rows")
