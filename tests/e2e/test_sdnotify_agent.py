"""Readiness on a real `changevault run`: the notifications systemd would see.

The test plays systemd: it binds an AF_UNIX datagram socket, passes it as
NOTIFY_SOCKET (and a 2 s WATCHDOG_USEC) and records every datagram with what
was true at the moment it arrived.
"""

from __future__ import annotations

import itertools
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from agent.archive.writer import LEASE_NAME
from connectors.storage.lease import LEASE_PREFIX
from tests.e2e.agent_process import AgentProcess, make_keys, wait_for, write_config

SNAPSHOT_ROWS = 150_000


@dataclass(frozen=True)
class Note:
    at: float
    fields: dict[str, str]
    checkpoint_saved: bool  # state_dir/checkpoint.json existed on arrival
    lease_taken: bool  # the archive lease object existed on arrival
    slot_exists: bool  # the replication slot existed on arrival


class FakeSystemd:
    """Receives notifications; probes the agent's state as each one arrives."""

    def __init__(self, state: Path, archive: Path, dsn: str, slot: str) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="cvn-"))  # short: sun_path is 108 bytes
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._state, self._archive, self._dsn, self._slot = state, archive, dsn, slot
        self.notes: list[Note] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.notes.append(Note(time.monotonic(), fields, *self._probe()))

    def _probe(self) -> tuple[bool, bool, bool]:
        checkpoint = (self._state / "checkpoint.json").exists()
        lease = (self._archive / LEASE_PREFIX / LEASE_NAME).exists()
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            slot = conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self._slot,)
            ).fetchone() is not None
        return checkpoint, lease, slot

    def with_key(self, key: str) -> list[Note]:
        return [n for n in self.notes if key in n.fields]

    def statuses(self) -> list[str]:
        return [n.fields["STATUS"] for n in self.with_key("STATUS")]

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self._sock.close()
        self.path.unlink(missing_ok=True)
        self._dir.rmdir()


def _config(tmp_path: Path, dsn: str, slot: str, keys: dict[str, Path]) -> Path:
    return write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": slot, "publication": slot,
                "heartbeat_interval": "1s"},
        archive_url=(tmp_path / "archive").as_uri(),
        keys=keys,
        state_dir=tmp_path / "state",
    )


def test_ready_after_startup_checks_not_after_snapshot_watchdog_and_stopping(
    pg_database: Any, tmp_path: Path
) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, label text, qty int)")
        # Big enough that the initial snapshot takes a while: READY must not wait for it.
        conn.execute(
            "INSERT INTO items SELECT g, repeat('x', 200) || g, g %% 97 "
            "FROM generate_series(1, %s) g", (SNAPSHOT_ROWS,)
        )
    state, archive, slot = tmp_path / "state", tmp_path / "archive", "cv_notify"
    config = _config(tmp_path, pg_database.dsn, slot, make_keys(tmp_path / "keys"))
    systemd = FakeSystemd(state, archive, pg_database.dsn, slot)
    agent = AgentProcess(config, tmp_path / "agent.log",
                         env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"})
    try:
        wait_for(lambda: systemd.with_key("READY"), 90, "READY=1")
        ready = systemd.with_key("READY")[0]
        # Start-up checks passed: archive open (lease taken), source started (slot there)...
        assert ready.lease_taken and ready.slot_exists, ready
        # ...but the initial snapshot had not finished: READY does not wait for it.
        assert not ready.checkpoint_saved, "READY=1 came only after the initial snapshot"
        wait_for(lambda: (state / "checkpoint.json").exists(), 120, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            for i in range(8):  # the pipeline progresses while we watch the watchdog
                conn.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (i + 1,))
                time.sleep(1)
        wait_for(lambda: any(s.startswith("streaming; checkpoint") for s in systemd.statuses()),
                 30, "a streaming STATUS= line")
        before_stop = time.monotonic()
    finally:
        code = agent.stop()
        time.sleep(0.5)
        systemd.close()
    assert code == 0, agent.log()

    notes = systemd.notes
    # READY exactly once, with no reload in between.
    assert len(systemd.with_key("READY")) == 1
    # Progress in STATUS=, in the order the agent went through its phases.
    statuses = systemd.statuses()
    first = {s: i for i, s in reversed(list(enumerate(statuses)))}
    assert "opening the archive" in first and "starting the source" in first, statuses
    snap = next(i for i, s in enumerate(statuses) if s.startswith("initial snapshot"))
    stream = next(i for i, s in enumerate(statuses) if s.startswith("streaming"))
    assert first["opening the archive"] < first["starting the source"] < snap < stream
    assert notes.index(ready) < notes.index(systemd.with_key("STATUS")[snap]), \
        "the initial snapshot started before READY=1"
    # WATCHDOG=1 about every second (WATCHDOG_USEC / 2) while the pipeline progresses.
    pings = [n.at for n in systemd.with_key("WATCHDOG") if n.at <= before_stop]
    assert len(pings) >= 6, f"only {len(pings)} WATCHDOG=1"
    assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0
    assert all(n.at >= ready.at for n in systemd.with_key("WATCHDOG"))
    # STOPPING=1 on SIGTERM, once, and last but for status text.
    stopping = systemd.with_key("STOPPING")
    assert len(stopping) == 1 and stopping[0].at >= before_stop
    assert not [n for n in systemd.with_key("WATCHDOG") if n.at > stopping[0].at + 0.1]


def test_no_ready_while_the_source_is_unreachable(pg_database: Any, tmp_path: Path) -> None:
    """Start-up checks that fail keep the agent un-ready (systemd's start timeout decides)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    dsn = f"postgresql://nobody@127.0.0.1:{closed_port}/nothing"
    state, archive, slot = tmp_path / "state", tmp_path / "archive", "cv_notify_down"
    config = _config(tmp_path, dsn, slot, make_keys(tmp_path / "keys"))
    systemd = FakeSystemd(state, archive, pg_database.dsn, slot)
    agent = AgentProcess(config, tmp_path / "agent.log",
                         env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"})
    try:
        wait_for(lambda: "starting the source" in systemd.statuses(), 60, "the source start")
        time.sleep(4)  # at least one retry with backoff
        assert agent.alive(), agent.log()
    finally:
        code = agent.stop()
        time.sleep(0.5)
        systemd.close()
    assert code == 0, agent.log()
    assert not systemd.with_key("READY"), [n.fields for n in systemd.notes]
    assert not systemd.with_key("WATCHDOG")
    assert len(systemd.with_key("STOPPING")) == 1
    assert "retrying" in agent.log()
