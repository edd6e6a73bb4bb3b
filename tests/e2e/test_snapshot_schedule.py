"""Scheduled snapshots while `run` streams under concurrent writes; expire while it runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from agent.archive import catalog
from agent.archive.reader import complete_snapshots
from tests.e2e.agent_process import AgentProcess, cli, wait_for
from tests.integration.test_snapshots import (
    chain,
    checkpoint_at_least,
    fold_from_snapshot,
    has_checkpoint,
    reader,
    setup_agent,
    table_state,
)


def _workload(dsn: str, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        i = 0
        while not stop.is_set():
            i += 1
            with conn.transaction():
                conn.execute("UPDATE accounts SET points = points + 1 WHERE id = %s", (i % 50 + 1,))
                conn.execute("INSERT INTO accounts VALUES (%s, %s)", (1000 + i, i))
            if i % 7 == 0:
                conn.execute("DELETE FROM accounts WHERE id = %s", (1000 + i - 3,))


def test_scheduled_snapshots_under_writes_and_expire_while_running(
    pg_database: Any, tmp_path: Path
) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, points int)")
        conn.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 50) g")
    config, keys, state = setup_agent(
        tmp_path, dsn, {"snapshot_interval": "2s", "retention": "5s"}
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    stop = threading.Event()
    writer = threading.Thread(target=_workload, args=(dsn, stop))
    try:
        wait_for(lambda: has_checkpoint(state), 60, "initial snapshot")
        writer.start()
        wait_for(lambda: len(complete_snapshots(chain(tmp_path, keys))) >= 4, 90, "snapshots")
        time.sleep(3)  # the oldest scheduled snapshots fall out of the 5 s window
        proc = cli(["expire", "-c", str(config)])  # the agent holds the lease
        assert proc.returncode == 0, proc.stderr + agent.log()
        assert "expired catalog entries before" in proc.stdout
        verify = cli(["verify", "-c", str(config)])
        assert verify.returncode == 0, verify.stderr
        stop.set()
        writer.join()
        wait_for(checkpoint_at_least(state, dsn), 60, "checkpoint past the workload")
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        assert agent.stop() == 0, agent.log()

    entries = chain(tmp_path, keys)
    retention = [e for e in entries if e.kind == catalog.RETENTION]
    assert retention and retention[0].body["request_id"]  # recorded by the agent
    assert entries[0].seq == retention[-1].body["first_kept_seq"]
    # Each scheduled snapshot was taken while rows changed: its rows plus the
    # changes after its position reproduce the final table exactly.
    snaps = complete_snapshots(entries)
    assert len(snaps) >= 2
    final = table_state(dsn, "accounts")
    r = reader(tmp_path, keys)
    for s in snaps:
        assert fold_from_snapshot(r, s.snapshot_id, "accounts") == final, s.snapshot_id
    assert cli(["verify", "-c", str(config)]).returncode == 0
