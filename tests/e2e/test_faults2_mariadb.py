"""MariaDB through the real CLI with Kafka and an archive: the server killed and
restarted during capture loses nothing; binlogs rotated and purged while the
agent is stopped make `run` exit 3 naming the position it needed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import one_error_line, read_events
from tests.servers.mariadb import MariaDBServer


@pytest.fixture
def own_mariadb(server_log_dir: Path) -> Iterator[MariaDBServer]:
    server = MariaDBServer(log_dir=server_log_dir, name="mariadb-faults2")
    try:
        server.start()
        server.execute("CREATE DATABASE shop")
        server.execute("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20))")
        yield server
    finally:
        server.cleanup()


def checkpoint_gtid(state: Path) -> str | None:
    try:
        doc = json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return next((v for k, v in doc["position"]["extra"] if k == "gtid"), None)


def wait_caught_up(server: MariaDBServer, state: Path, timeout: float = 90) -> None:
    end = server.execute("SELECT @@gtid_binlog_pos")[0][0]
    seqno = end.split("-")[-1]
    wait_for(lambda: (g := checkpoint_gtid(state)) is not None and g.split("-")[-1] == seqno,
             timeout, f"checkpoint at GTID {end}")


def insert(server: MariaDBServer, ids: range, note: str) -> None:
    for i in ids:
        server.execute("INSERT INTO shop.t VALUES (%s, %s)", params=(i, note))


def ids_once(history: list[dict[str, Any]]) -> list[int]:
    seen: set[str] = set()
    out = []
    for e in history:
        if e["op"] == "r" or e["id"] in seen:
            continue
        seen.add(e["id"])
        out.append(int(e["key"]["id"]))
    return out


@pytest.mark.timeout(240)
def test_mariadb_restart_during_capture_and_purged_binlog(
    own_mariadb: MariaDBServer, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"

    def configure() -> Path:
        return write_config(
            tmp_path / "cv.yaml",
            source={"type": "mysql", "dsn": own_mariadb.dsn("shop"), "server_id": 7101},
            archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
            kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
                   "replication_factor": 1, "min_insync_replicas": 1},
        )

    config = configure()
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_gtid(state) is not None, 60, "initial snapshot")
        insert(own_mariadb, range(1, 31), "before")
        time.sleep(0.5)  # some delivered, some maybe not: the restart lands mid-stream
        own_mariadb.restart("kill")
        config = configure()  # the server may have moved to another port
        insert(own_mariadb, range(31, 61), "after")
        wait_caught_up(own_mariadb, state)
        assert agent.alive(), agent.log()[-3000:]
        code = agent.stop()
    finally:
        if agent.alive():
            agent.kill()
    assert code == 0, agent.log()[-3000:]
    assert "reconnect" in agent.log(), "the restart went unnoticed"
    expected = list(range(1, 61))
    assert ids_once(read_events(config, keys)) == expected
    assert ids_once(read_events(config, keys, "--from-kafka")) == expected

    # Stopped agent; the server rotates and purges the binlog it still needs.
    needed = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
    insert(own_mariadb, range(61, 66), "while stopped")
    own_mariadb.execute("FLUSH BINARY LOGS")
    newest = own_mariadb.execute("SHOW BINARY LOGS")[-1][0]
    deadline = time.monotonic() + 30
    while own_mariadb.execute("SHOW BINARY LOGS")[0][0] != newest:
        assert time.monotonic() < deadline, "the server would not purge the old binlog"
        own_mariadb.execute(f"PURGE BINARY LOGS TO '{newest}'")
        time.sleep(0.2)
    line = one_error_line(cli(["run", "-c", str(config)], timeout=90), 3)
    assert needed in line and "no longer on the server" in line, line
    # The loss is on record in the archive: verify reports the gap.
    line = one_error_line(cli(["verify", "-c", str(config)]), 4)
    assert "gap" in line and needed in line, line
