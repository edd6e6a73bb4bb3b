"""On-demand and interrupted snapshots against a real PostgreSQL, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from agent.archive import catalog
from agent.archive.catalog import CatalogEntry
from agent.archive.reader import ArchiveReader, complete_snapshots, snapshot_envelopes
from agent.crypto.datakeys import DataKeyOpener
from agent.crypto.keyfiles import load_recipient_private, load_verify_keys
from connectors.storage.factory import open_object_store
from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config

Key = tuple[Any, ...]


# ------------------------------------------------------------------ helpers


def setup_agent(
    tmp_path: Path, dsn: str, extra: dict[str, Any] | None = None, name: str = "cv"
) -> tuple[Path, dict[str, Path], Path]:
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": f"{name}_slot", "publication": f"{name}_pub"},
        archive_url=(tmp_path / "archive").as_uri(),
        keys=keys,
        state_dir=state,
        extra=extra,
    )
    return config, keys, state


def has_checkpoint(state: Path) -> bool:
    return (state / "checkpoint.json").exists()


def chain(tmp_path: Path, keys: dict[str, Path]) -> list[CatalogEntry]:
    store = open_object_store((tmp_path / "archive").as_uri(), None)
    return list(catalog.read_chain(store, load_verify_keys([keys["signing.pub"]])))


def reader(tmp_path: Path, keys: dict[str, Path]) -> ArchiveReader:
    trusted = load_verify_keys([keys["signing.pub"]])
    opener = DataKeyOpener([load_recipient_private(keys["archive.key"])], trusted)
    store = open_object_store((tmp_path / "archive").as_uri(), None)
    return ArchiveReader(store, trusted, opener)


def table_state(dsn: str, table: str) -> dict[Key, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table}")  # test-owned table name
        names = [d.name for d in cur.description or []]
        return {(row[0],): dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def fold_from_snapshot(r: ArchiveReader, snapshot_id: str, table: str) -> dict[Key, dict[str, Any]]:
    """Snapshot rows, then every archived change after the snapshot's position."""
    snap = next(s for s in complete_snapshots(r.entries()) if s.snapshot_id == snapshot_id)
    state: dict[Key, dict[str, Any]] = {}
    for env in snapshot_envelopes(r, snap, {f"public.{table}"}):
        doc = json.loads(env)
        state[tuple(doc["key"].values())] = doc["after"]
    segments = [e for e in r.entries() if e.kind == catalog.SEGMENT]
    for tx in r.transactions(segments):
        if tx.position.sort_key <= snap.position.sort_key:
            continue
        for env in tx.events:
            doc = json.loads(env)
            if doc["source"]["table"] != table:
                continue
            if doc["op"] == "t":
                state.clear()
                continue
            key = tuple(doc["key"].values())
            if doc["op"] == "d":
                state.pop(key, None)
            else:
                state[key] = {**state.get(key, {}), **doc["after"]}
    return state


def checkpoint_at_least(state: Path, dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert end is not None

    def lsn(text: str) -> int:
        hi, lo = text.split("/")
        return (int(hi, 16) << 32) + int(lo, 16)

    def done() -> bool:
        try:
            cp = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
        except (FileNotFoundError, ValueError):
            return False
        return bool(lsn(cp) >= lsn(end[0]))

    return done


# -------------------------------------------------------------------- tests


def test_snapshot_command_when_the_agent_is_stopped(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO items SELECT g, 'a' || g FROM generate_series(1, 50) g")
    config, keys, state = setup_agent(tmp_path, pg_database.dsn, {"snapshot_interval": "1h"})
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: has_checkpoint(state), 60, "initial snapshot")
    finally:
        assert agent.stop() == 0, agent.log()
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET label = 'changed' WHERE id <= 10")
        conn.execute("DELETE FROM items WHERE id > 45")

    proc = cli(["snapshot", "-c", str(config)])
    assert proc.returncode == 0, proc.stderr
    assert "complete at position" in proc.stdout and "public.items: 45 rows" in proc.stdout

    snaps = complete_snapshots(chain(tmp_path, keys))
    assert len(snaps) == 2
    assert snaps[1].end.body["rows"] == {"public.items": 45}
    r = reader(tmp_path, keys)
    assert fold_from_snapshot(r, snaps[1].snapshot_id, "items") == table_state(pg_database.dsn, "items")
    # the lease was handed back: the agent starts again
    agent = AgentProcess(config, tmp_path / "agent2.log")
    try:
        wait_for(checkpoint_at_least(state, pg_database.dsn), 60, "agent resumed")
    finally:
        assert agent.stop() == 0, agent.log()
    assert cli(["verify", "-c", str(config)]).returncode == 0


def test_snapshot_command_asks_the_running_agent(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO items VALUES (1, 'x'), (2, 'y')")
    config, keys, state = setup_agent(tmp_path, pg_database.dsn, {"snapshot_interval": "1h"})
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: has_checkpoint(state), 60, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (3, 'z')")
        proc = cli(["snapshot", "-c", str(config)])
        assert proc.returncode == 0, proc.stderr + agent.log()
        assert "asked the running agent" in proc.stdout
        assert "public.items: 3 rows" in proc.stdout
    finally:
        assert agent.stop() == 0, agent.log()
    assert len(complete_snapshots(chain(tmp_path, keys))) == 2


def test_snapshot_command_without_a_checkpoint_refuses(pg_database: Any, tmp_path: Path) -> None:
    config, _keys, _state = setup_agent(tmp_path, pg_database.dsn)
    proc = cli(["snapshot", "-c", str(config)])
    assert proc.returncode == 2, proc.stderr
    assert "run `changevault run` first" in proc.stderr


def test_interrupted_snapshot_is_ignored_and_retaken(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO big SELECT g, repeat('p', 300) FROM generate_series(1, 8000) g")
    extra = {"snapshot_interval": "2s", "archive": {"url": (tmp_path / "archive").as_uri(),
             "segment_max_bytes": 4096, "segment_max_age": "1s"}}  # fmt: skip
    config, keys, state = setup_agent(tmp_path, pg_database.dsn, extra)

    def begins_without_end() -> list[str]:
        entries = chain(tmp_path, keys)
        done = {s.snapshot_id for s in complete_snapshots(entries)}
        return [
            str(e.body["snapshot_id"])
            for e in entries
            if e.kind == catalog.SNAPSHOT_BEGIN and e.body["snapshot_id"] not in done
        ]

    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: has_checkpoint(state), 120, "initial snapshot")
        wait_for(lambda: bool(begins_without_end()), 60, "a scheduled snapshot to start")
    finally:
        assert agent.stop() == 0, agent.log()  # SIGTERM in the middle of it
    interrupted = begins_without_end()
    assert len(interrupted) == 1
    entries = chain(tmp_path, keys)
    assert len(complete_snapshots(entries)) == 1
    assert not any(
        e.kind == catalog.SNAPSHOT_END and e.body["snapshot_id"] == interrupted[0] for e in entries
    )
    assert cli(["verify", "-c", str(config)]).returncode == 0

    agent = AgentProcess(config, tmp_path / "agent2.log")
    try:
        wait_for(lambda: len(complete_snapshots(chain(tmp_path, keys))) >= 2, 120, "a new snapshot")
    finally:
        assert agent.stop() == 0, agent.log()
    snaps = complete_snapshots(chain(tmp_path, keys))
    assert interrupted[0] not in {s.snapshot_id for s in snaps}
    assert snaps[1].end.body["rows"] == {"public.big": 8000}
