"""Access: private key files open to group/others are refused; what the agent
creates is private even under umask 000; the agent host needs only
archive.pub, signing.key and keyhash.key — verify and restore run elsewhere
with archive.key and signing.pub."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.e2e.agent_process import AgentProcess, cli, wait_for, write_config
from tests.e2e.fault_tools import checkpoint_lsn, create_schema, drain_and_stop, one_error_line

AGENT_KEYS = ("archive.pub", "signing.key", "keyhash.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def generate_keys(out: Path) -> dict[str, Path]:
    proc = cli(["keys", "generate", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return {p.name: p for p in out.iterdir()}


class SpillWatch:
    """Records the mode of every spill file that appears under state_dir/spill."""

    def __init__(self, spill_dir: Path) -> None:
        self.spill_dir = spill_dir
        self.modes: dict[str, int] = {}
        self.dir_mode: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.dir_mode = mode(self.spill_dir)
                for path in self.spill_dir.iterdir():
                    self.modes.setdefault(path.name, mode(path))
            except FileNotFoundError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.timeout(240)
def test_agent_host_keys_only_private_modes_and_loose_keys_refused(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    create_schema(dsn)
    keys = generate_keys(tmp_path / "keys")
    # `keys generate`: private files 0600 in a 0700 directory, public ones 0644.
    assert mode(tmp_path / "keys") == 0o700
    assert {n: mode(p) for n, p in keys.items()} == {
        "archive.key": 0o600, "signing.key": 0o600, "keyhash.key": 0o600,
        "archive.pub": 0o644, "signing.pub": 0o644,
    }

    # The agent host: only the three files the agent needs.
    host = tmp_path / "agent-host"
    host.mkdir(mode=0o700)
    for name in AGENT_KEYS:
        shutil.copy2(keys[name], host / name)
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "agent.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_access", "publication": "cv_access"},
        archive_url=(tmp_path / "archive").as_uri(),
        keys={"archive.pub": host / "archive.pub", "signing.key": host / "signing.key",
              "keyhash.key": host / "keyhash.key", "signing.pub": host / "absent"},
        state_dir=state,
    )
    doc = yaml.safe_load(config.read_text())
    del doc["encryption"]["trusted_signing_keys"]  # signing.pub is not on this host
    config.write_text(yaml.safe_dump(doc))

    # Loose modes on a private key: refused by `run`, exit 2, naming the file.
    for name, loose in (("signing.key", 0o640), ("keyhash.key", 0o604)):
        (host / name).chmod(loose)
        line = one_error_line(cli(["run", "-c", str(config)], timeout=60), 2)
        assert str(host / name) in line and f"{loose:04o}" in line, line
        (host / name).chmod(0o600)
    assert not state.exists() or not (state / "checkpoint.json").exists()

    # umask 000: whatever the agent creates without an explicit mode would be
    # world-readable; it must not be.
    old_umask = os.umask(0)
    try:
        agent = AgentProcess(config, tmp_path / "agent.log")
    finally:
        os.umask(old_umask)
    watch = SpillWatch(state / "spill")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Larger than the 4 MiB in-memory budget: spilled to state_dir.
            conn.execute("INSERT INTO items SELECT g, g, repeat('x', 200) FROM generate_series(1, 40000) g")
            conn.execute("UPDATE items SET val = -1 WHERE id = 7")
        assert drain_and_stop(agent, dsn, state, timeout=120) == 0, agent.log()[-3000:]
    finally:
        watch.stop()
        if agent.alive():
            agent.kill()
    assert "Traceback" not in agent.log()

    assert mode(state) == 0o700
    assert watch.modes, "the large transaction was never spilled to disk"
    assert set(watch.modes.values()) == {0o600}, watch.modes
    # The spill directory itself follows the umask (0777 here); it is out of
    # reach because state_dir is 0700 (connectors/postgres/spill.py could
    # create it 0700 too).
    assert watch.dir_mode is not None
    for path in state.rglob("*"):
        if path.is_file() and path.name != "agent-id":  # agent-id is an identifier, not a secret
            assert mode(path) & 0o077 == 0, f"{path} has mode {mode(path):04o}"
    assert mode(state / "checkpoint.json") == 0o600
    # file:// archive: sealed objects readable, never writable by group/others.
    archive_paths = list((tmp_path / "archive").rglob("*"))
    assert archive_paths
    writable = [f"{p} {mode(p):04o}" for p in archive_paths if mode(p) & 0o022]
    assert writable == [], writable[:5]

    # Elsewhere, with archive.key and signing.pub: verify, decrypt and restore.
    elsewhere = write_config(
        tmp_path / "restore.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_access", "publication": "cv_access"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=tmp_path / "restore-state",
    )
    proc = cli(["verify", "-c", str(elsewhere), "--decrypt", "--private-key", str(keys["archive.key"])])
    assert proc.returncode == 0, proc.stderr
    proc = cli(["restore", "-c", str(elsewhere), "--to-position", _lsn(dsn), "--target-dsn", dsn,
                "--target-schema", "restored", "--private-key", str(keys["archive.key"])], timeout=180)
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        want = conn.execute("SELECT id, val, note FROM public.items ORDER BY id").fetchall()
        got = conn.execute("SELECT id, val, note FROM restored.items ORDER BY id").fetchall()
    assert got == want and len(got) == 40000


def _lsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])
