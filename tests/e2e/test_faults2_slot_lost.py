"""A PostgreSQL slot invalidated by max_slot_wal_keep_size while the agent is
stopped: `run` exits 3 naming the slot, the archive records the gap once,
`verify` reports it (exit 4), and the documented re-snapshot recovers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from agent.archive import catalog
from agent.crypto.keyfiles import load_verify_keys
from connectors.storage.local import LocalObjectStore
from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    checkpoint_doc,
    checkpoint_lsn,
    create_schema,
    drain_and_stop,
    invalidate_slot,
    one_error_line,
)
from tests.servers.postgres import PostgresServer

SLOT = "cv_gap_slot"


@pytest.fixture
def small_wal_pg(server_log_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(
        log_dir=server_log_dir, name="pg-slot-lost",
        extra_settings={"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0",
                        "min_wal_size": "32MB", "max_wal_size": "64MB"},
    )
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def gap_entries(archive: Path, keys: dict[str, Path]) -> list[catalog.CatalogEntry]:
    trusted = load_verify_keys([keys["signing.pub"]])
    return [e for e in catalog.read_chain(LocalObjectStore(archive), trusted) if e.kind == catalog.GAP]


@pytest.mark.timeout(240)
def test_slot_invalidated_while_stopped_is_exit_3_and_a_recorded_gap(
    small_wal_pg: PostgresServer, tmp_path: Path
) -> None:
    dsn = small_wal_pg.create_database("shop")
    create_schema(dsn)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": SLOT, "publication": "cv_gap_pub"},
        archive_url=archive.as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO ledger VALUES (1, 0)")
        assert drain_and_stop(agent, dsn, state) == 0, agent.log()[-2000:]
    finally:
        if agent.alive():
            agent.kill()
    checkpoint = checkpoint_doc(state)
    assert checkpoint is not None
    since = checkpoint["position"]["text"]

    # Stopped agent, the database keeps writing: the slot falls behind the limit.
    invalidate_slot(small_wal_pg, dsn, SLOT)

    proc = cli(["run", "-c", str(config)], timeout=90)
    line = one_error_line(proc, 3)
    assert SLOT in line and "wal_status=lost" in line and since in line, line

    gaps = gap_entries(archive, keys)
    assert len(gaps) == 1, gaps
    assert gaps[0].body["from"]["text"] == since
    assert SLOT in gaps[0].body["reason"]

    verify = cli(["verify", "-c", str(config)])
    line = one_error_line(verify, 4)
    assert "gap" in line and f"entry {gaps[0].seq}" in line, line

    # A restarted agent (systemd) meeting the same loss does not pile up gaps.
    assert cli(["run", "-c", str(config)], timeout=90).returncode == 3
    assert len(gap_entries(archive, keys)) == 1
    # A replayable history would have to cross the gap: refused.
    history = cli(["events", "-c", str(config), "--private-key", str(keys["archive.key"])])
    assert "gap" in one_error_line(history, 4)

    # docs/postgresql.md, "Re-snapshot": teardown, move the checkpoint away, run.
    td = cli(["teardown", "-c", str(config), "--yes"])
    assert td.returncode == 0, td.stderr
    kept = tmp_path / "old-state"
    kept.mkdir()
    for path in [*state.glob("checkpoint*"), state / "postgres-created.json"]:
        if path.exists():
            shutil.move(str(path), kept / path.name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO ledger VALUES (2, 0)")
    agent = AgentProcess(config, tmp_path / "agent-after.log")
    try:
        # Not resumed from the archive's pre-gap checkpoint: a new snapshot.
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "the new snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO ledger VALUES (3, 0)")
        assert drain_and_stop(agent, dsn, state) == 0, agent.log()[-2000:]
    finally:
        if agent.alive():
            agent.kill()
    assert "resuming from the archive" not in agent.log(), agent.log()[-2000:]
    # The new snapshot and what follows it restore exactly: the rows lost to
    # the gap (written while the agent was stopped) are in the new snapshot.
    now = datetime.now(UTC).isoformat()
    proc = cli(["restore", "-c", str(config), "--to", now, "--target-dsn", dsn,
                "--target-schema", "after_gap", "--private-key", str(keys["archive.key"])])
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        source_rows = conn.execute("SELECT seq FROM public.ledger ORDER BY seq").fetchall()
        restored = conn.execute("SELECT seq FROM after_gap.ledger ORDER BY seq").fetchall()
    assert restored == source_rows and len(source_rows) > 3
    # The history now starts at the snapshot taken after the gap.
    history = cli(["events", "-c", str(config), "--private-key", str(keys["archive.key"])])
    assert history.returncode == 0, history.stderr
    docs = [json.loads(line) for line in history.stdout.splitlines()]
    ledger = {d["after"]["seq"] for d in docs if d["source"]["table"] == "ledger" and d["after"]}
    assert sorted((q,) for q in ledger) == [tuple(r) for r in source_rows]
    # The gap stays on record.
    assert cli(["verify", "-c", str(config)]).returncode == 4
