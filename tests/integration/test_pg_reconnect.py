"""Walsender termination and server restarts: the source reconnects on its own
and no committed change is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from connectors.postgres.source import PostgresSource
from tests.integration.test_pg_source import Captured, drain, make_settings
from tests.servers.postgres import PostgresServer


@pytest.fixture(scope="module")
def durable_server(server_log_dir: Path) -> Iterator[PostgresServer]:
    # synchronous_commit=on: an immediate stop must not lose acknowledged commits
    # on the server side, or the test could not tell whose fault a loss is.
    server = PostgresServer(
        log_dir=server_log_dir,
        extra_settings={"synchronous_commit": "on", "wal_sender_timeout": "20s"},
        name="pg-reconnect",
    )
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class Writer:
    """Inserts rows one per transaction; remembers those whose commit returned."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.committed: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        conn: psycopg.Connection | None = None  # type: ignore[type-arg]
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                i += 1
                conn.execute("INSERT INTO w VALUES (%s)", (i,))
                self.committed.append(i)
            except psycopg.OperationalError:
                conn = None
                time.sleep(0.05)
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _run_with_fault(
    server: PostgresServer, dbname: str, state_dir: Path, fault: Callable[[str], None]
) -> None:
    server.create_database(dbname)
    server.execute("CREATE TABLE w (id int PRIMARY KEY)", dbname)
    settings = make_settings(server.dsn(dbname), state_dir)
    source = PostgresSource(settings, state_dir, status_interval=0.5)
    try:
        reader = source.start(None)
        assert reader is not None
        reader.close()
        stream = source.stream()
        got = Captured()
        with Writer(server.dsn(dbname)) as writer:
            drain(source, lambda c: len(c.events) >= 50, captured=got, stream=stream)
            fault(settings.source.slot)
            drain(source, lambda c, n=len(got.events): len(c.events) >= n + 50,
                  captured=got, stream=stream, timeout=120)  # fmt: skip
        committed = set(writer.committed)

        def all_seen(c: Captured) -> bool:
            return committed <= {e.after["id"] for e in c.events if e.after}

        drain(source, all_seen, captured=got, stream=stream, timeout=120)
        ids = [e.after["id"] for e in got.events if e.after]
        assert len(ids) == len(set(ids)), "a transaction was delivered twice in one process"
        assert source.reconnects >= 1
        positions = [p.sort_key for p, _x, _e in got.transactions]
        assert positions == sorted(positions)
    finally:
        source.close()


def test_walsender_terminated(durable_server: PostgresServer, tmp_path: Path) -> None:
    def terminate(slot: str) -> None:
        rows = durable_server.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name = %s AND active_pid IS NOT NULL",
            params=(slot,),
        )
        assert rows == [(True,)]

    _run_with_fault(durable_server, "reconn_term", tmp_path / "state", terminate)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart(durable_server: PostgresServer, tmp_path: Path, mode: str) -> None:
    def restart(_slot: str) -> None:
        durable_server.stop(mode)  # type: ignore[arg-type]
        time.sleep(1.5)  # the source retries against a server that is down
        durable_server.start()

    _run_with_fault(durable_server, f"reconn_{mode}", tmp_path / "state", restart)
