"""SIGHUP on a real `changevault run`: live changes apply, position is kept, bad configs are refused."""

from __future__ import annotations

import json
import re
import signal
import socket
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.e2e.agent_process import AgentProcess, events, make_keys, wait_for, write_config

DAY = 86400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def checkpoint_lsn(state: Path) -> int | None:
    try:
        text = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    hi, lo = str(row[0]).split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def wait_captured(dsn: str, state: Path, what: str) -> None:
    end = current_lsn(dsn)
    wait_for(lambda: (cp := checkpoint_lsn(state)) is not None and cp >= end, 60, what)


def insert(dsn: str, ids: range) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in ids:
            conn.execute("INSERT INTO accounts VALUES (%s, %s)", (i, i * 10))


def edit_config(path: Path, **changes: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(doc))


class NotifyLog:
    """A stand-in for systemd's notify socket: keeps every datagram's fields."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="cvr-"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append(dict(f.split("=", 1) for f in data.decode().splitlines()))

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self._sock.close()
        self.path.unlink(missing_ok=True)
        self._dir.rmdir()


def start(pg_database: Any, tmp_path: Path, slot: str) -> tuple[Path, dict[str, Path], Path, int]:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, points int)")
        conn.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 5) g")
    keys = make_keys(tmp_path / "keys")
    port = free_port()
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": pg_database.dsn, "slot": slot, "publication": slot,
                "heartbeat_interval": "1s"},
        archive_url=(tmp_path / "archive").as_uri(),
        keys=keys,
        state_dir=tmp_path / "state",
        extra={"metrics_listen": f"127.0.0.1:{port}", "retention": "35d"},
    )
    return config, keys, tmp_path / "state", port


def changes(config: Path, keys: dict[str, Path]) -> list[tuple[str, int]]:
    return [(e["op"], e["key"]["id"]) for e in events(config, keys) if e["op"] != "r"]


def test_sighup_applies_retention_and_keeps_the_checkpoint(pg_database: Any, tmp_path: Path) -> None:
    config, keys, state, port = start(pg_database, tmp_path, "cv_reload")
    notify = NotifyLog()
    agent = AgentProcess(config, tmp_path / "agent.log", env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        insert(pg_database.dsn, range(100, 110))
        wait_captured(pg_database.dsn, state, "rows before the reload")
        assert metric(port, "changevault_retention_seconds") == 35 * DAY
        before = checkpoint_lsn(state)

        # retention: live; segment_max_bytes: through a pipeline rebuild from the
        # checkpoint; data_key_max_messages: needs a restart (kept, reported).
        edit_config(config, retention="7d", archive__segment_max_bytes=65536,
                    encryption__data_key_max_messages=5000)
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(port, "changevault_retention_seconds") == 7 * DAY, 30,
                 "the new retention in /metrics")
        wait_for(lambda: "rebuilding the pipeline" in agent.log(), 30, "the pipeline rebuild")
        cp = checkpoint_lsn(state)
        assert cp is not None and before is not None and cp >= before  # never goes back
        insert(pg_database.dsn, range(200, 210))
        wait_captured(pg_database.dsn, state, "rows after the reload")
        assert agent.alive()
    finally:
        code = agent.stop()
        notify.close()
    log = agent.log()
    assert code == 0, log

    restart_lines = [ln for ln in log.splitlines() if "applied only by a restart" in ln]
    assert len(restart_lines) == 1 and "encryption.data_key_max_messages" in restart_lines[0], log
    assert "retention" not in restart_lines[0] and "segment_max_bytes" not in restart_lines[0]
    # No re-snapshot: the initial snapshot was the only one.
    assert len(re.findall(r"snapshot \S+ at \S+ started", log)) == 1, log
    # Every row once, in order, across the reload and the rebuild.
    assert changes(config, keys) == [("c", i) for i in [*range(100, 110), *range(200, 210)]]
    # systemd saw RELOADING=1 then READY=1 for the reload.
    kinds = [m for m in notify.messages if "RELOADING" in m or "READY" in m]
    assert ["RELOADING" in m for m in kinds] == [False, True, False], kinds
    assert "MONOTONIC_USEC" in kinds[1]


def test_invalid_config_on_reload_is_rejected_while_streaming_continues(
    pg_database: Any, tmp_path: Path
) -> None:
    config, keys, state, port = start(pg_database, tmp_path, "cv_reload_bad")
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        good = config.read_text()
        edit_config(config, retention="forever")
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in agent.log(), 30, "the rejection")
        insert(pg_database.dsn, range(300, 305))  # after the bad reload: still captured
        wait_captured(pg_database.dsn, state, "rows after the bad reload")
        assert metric(port, "changevault_retention_seconds") == 35 * DAY
        assert agent.alive()

        # A later valid reload still works.
        config.write_text(good)
        edit_config(config, retention="1d")
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(port, "changevault_retention_seconds") == DAY, 30, "1d retention")
        insert(pg_database.dsn, range(400, 403))
        wait_captured(pg_database.dsn, state, "rows after the good reload")
    finally:
        code = agent.stop()
    log = agent.log()
    assert code == 0, log
    rejected = [ln for ln in log.splitlines() if "reload rejected" in ln]
    assert len(rejected) == 1, log
    assert str(config) in rejected[0] and "retention" in rejected[0], rejected
    assert changes(config, keys) == [("c", i) for i in [*range(300, 305), *range(400, 403)]]
