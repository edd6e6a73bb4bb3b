"""`changevault expire` with the agent stopped: the window stays restorable, verify passes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
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


def test_expire_with_nothing_to_do(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config, keys, state = setup_agent(tmp_path, pg_database.dsn, {"retention": "1d"})
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: has_checkpoint(state), 60, "initial snapshot")
    finally:
        assert agent.stop() == 0, agent.log()
    before = chain(tmp_path, keys)
    proc = cli(["expire", "-c", str(config)])
    assert proc.returncode == 0, proc.stderr
    assert "nothing to expire" in proc.stdout
    assert [e.digest for e in chain(tmp_path, keys)] == [e.digest for e in before]


def test_expire_keeps_the_window_restorable(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g")
    retention = 6.0
    config, keys, state = setup_agent(
        tmp_path, dsn, {"retention": f"{retention:g}s", "snapshot_interval": "2s"}
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: has_checkpoint(state), 60, "initial snapshot")
        deadline = time.monotonic() + 14
        i = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                i += 1
                conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", (i % 20 + 1,))
                conn.execute("INSERT INTO items VALUES (%s, %s)", (100 + i, i))
                time.sleep(0.2)
        wait_for(checkpoint_at_least(state, dsn), 60, "checkpoint past the workload")
    finally:
        assert agent.stop() == 0, agent.log()
    before = chain(tmp_path, keys)
    snaps_before = complete_snapshots(before)
    assert len(snaps_before) >= 4

    now = datetime.now(UTC)
    proc = cli(["expire", "-c", str(config)])
    assert proc.returncode == 0, proc.stderr
    assert "expired catalog entries before" in proc.stdout
    later = datetime.now(UTC)

    after = chain(tmp_path, keys)
    assert after[0].seq > 0
    retention_entries = [e for e in after if e.kind == catalog.RETENTION]
    assert retention_entries[-1].body["first_kept_seq"] == after[0].seq
    horizon = datetime.fromisoformat(str(after[-1].retention_horizon))
    # the horizon is at or before the window's start, and not older than needed
    assert horizon <= later - timedelta(seconds=retention)
    window_start = now - timedelta(seconds=retention)
    assert not any(
        horizon < datetime.fromisoformat(s.started) <= window_start for s in snaps_before
    )
    # every snapshot inside the window is still complete and reproduces the end state
    kept = {s.snapshot_id for s in complete_snapshots(after)}
    final = table_state(dsn, "items")
    r = reader(tmp_path, keys)
    for s in snaps_before:
        if datetime.fromisoformat(s.started) >= horizon:
            assert s.snapshot_id in kept
            assert fold_from_snapshot(r, s.snapshot_id, "items") == final
    # deleted objects are really gone
    archive = tmp_path / "archive"
    for e in before:
        if e.seq < after[0].seq and e.kind == catalog.SEGMENT:
            assert not (archive / e.body["object"]).exists()
    assert cli(["verify", "-c", str(config)]).returncode == 0
    decrypt = cli(["verify", "-c", str(config), "--decrypt", "--private-key", str(keys["archive.key"])])
    assert decrypt.returncode == 0, decrypt.stderr
    status = cli(["status", "-c", str(config), "--json"])
    assert status.returncode == 0, status.stderr
    assert '"oldest_restorable_time": "' + str(after[-1].retention_horizon) in status.stdout

    # a second run with the window now reaching past the horizon has nothing to
    # do; the agent resumes on the shortened chain
    again = cli(["expire", "-c", str(config)], env={"CHANGEVAULT_RETENTION": "1d"})
    assert again.returncode == 0 and "nothing to expire" in again.stdout, again.stdout
    agent = AgentProcess(config, tmp_path / "agent2.log")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (9999, 1)")
        wait_for(checkpoint_at_least(state, dsn), 60, "agent resumed")
    finally:
        assert agent.stop() == 0, agent.log()
    assert cli(["verify", "-c", str(config)]).returncode == 0
