"""MySQLSource under faults, on a MariaDB server of its own (restarts, purged binlogs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import PositionLostError
from agent.events import Transaction
from tests.integration.test_mysql_helpers import collect, make_source
from tests.servers.mariadb import MariaDBServer


@pytest.fixture
def own_mariadb(server_log_dir: Path) -> Iterator[MariaDBServer]:
    server = MariaDBServer(log_dir=server_log_dir, name="mariadb-faults")
    try:
        server.start()
        server.execute("CREATE DATABASE shop")
        server.execute("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20))")
        yield server
    finally:
        server.cleanup()


def test_server_restart_during_streaming_loses_nothing(
        own_mariadb: MariaDBServer, tmp_path: Path) -> None:
    source = make_source(own_mariadb.dsn("shop"), tmp_path, ["t"])
    source.start(None).close()  # type: ignore[union-attr]
    seen: dict[int, int] = {}
    done = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for item in source.stream():
                if isinstance(item, Transaction):
                    for ev in item.events:
                        assert ev.after is not None
                        seen[ev.after["id"]] = seen.get(ev.after["id"], 0) + 1
                    source.confirm(item.position)
                if len(seen) >= 40 or done.is_set():
                    return
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    for i in range(20):
        own_mariadb.execute("INSERT INTO shop.t VALUES (%s, 'before')", params=(i,))
    time.sleep(1.0)
    own_mariadb.restart("kill")
    for i in range(20, 40):
        own_mariadb.execute("INSERT INTO shop.t VALUES (%s, 'after')", params=(i,))
    thread.join(timeout=60)
    done.set()
    assert not errors, errors
    assert sorted(seen) == list(range(40))  # nothing lost; duplicates allowed (at-least-once)
    assert source.counters.reconnects >= 1


def test_purged_binlog_is_position_lost_naming_the_position(
        own_mariadb: MariaDBServer, tmp_path: Path) -> None:
    source = make_source(own_mariadb.dsn("shop"), tmp_path, ["t"])
    source.start(None).close()  # type: ignore[union-attr]
    own_mariadb.execute("INSERT INTO shop.t VALUES (1, 'a')")
    [(tx, _)] = collect(source, 1)
    source.close()
    # While the agent is stopped, the server moves on and purges what we still need.
    for i in range(2, 6):
        own_mariadb.execute("INSERT INTO shop.t VALUES (%s, 'b')", params=(i,))
    own_mariadb.execute("FLUSH BINARY LOGS")
    newest = own_mariadb.execute("SHOW BINARY LOGS")[-1][0]
    # A binlog still needed for InnoDB crash recovery is not purged until its checkpoint.
    deadline = time.monotonic() + 30
    while own_mariadb.execute("SHOW BINARY LOGS")[0][0] != newest:
        assert time.monotonic() < deadline, "the server would not purge the old binlog"
        own_mariadb.execute(f"PURGE BINARY LOGS TO '{newest}'")
        time.sleep(0.2)

    again = make_source(own_mariadb.dsn("shop"), tmp_path, ["t"])
    with pytest.raises(PositionLostError) as info:
        again.start(tx.position)
    assert info.value.exit_code == 3
    assert tx.position.text in str(info.value)
    assert again.counters.positions_lost == 1
    again.confirm(tx.position)
    guard = {r.name: r for r in again.checks()}["mysql binlog retention guard"]
    assert not guard.ok and tx.position.text in guard.detail
    # The stream itself refuses too (the server answers 1236) instead of skipping ahead.
    again._start = tx.position
    with pytest.raises(PositionLostError, match=tx.position.text):
        collect(again, 1, timeout=20)
