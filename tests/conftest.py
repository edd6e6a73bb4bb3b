"""Real-server fixtures: private PostgreSQL, MariaDB, Kafka (tansu) and S3 (moto).

Each server is session-scoped and started only when a test first asks for it;
under xdist every worker starts its own (free ports, private temp dirs).
Teardown always runs, also after a failure or Ctrl-C, and the servers die with
the pytest process if it is killed. See docs/testing.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from psycopg import sql

from tests.servers.mariadb import MariaDBServer, quote_identifier
from tests.servers.moto import MotoS3
from tests.servers.postgres import PostgresServer
from tests.servers.processes import tail
from tests.servers.tansu import TansuBroker

_SERVER_FIXTURES = ("pg_server", "mariadb_server", "kafka_broker", "s3_server")


class _Logged(Protocol):
    log_path: Path


def _unique_name(request: pytest.FixtureRequest, prefix: str, max_len: int) -> str:
    """prefix + the test's name + random hex, lowercase [a-z0-9_], within max_len."""
    test = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    suffix = uuid.uuid4().hex[:8]
    room = max_len - len(prefix) - len(suffix) - 2
    test = test[:room].rstrip("_")
    return f"{prefix}_{test}_{suffix}" if test else f"{prefix}_{suffix}"


# -- logs -------------------------------------------------------------------------


_log_dir_key = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def server_log_dir(request: pytest.FixtureRequest) -> Path:
    """Where every server started by this process (or xdist worker) logs.

    A private dir under $CV_TEST_LOG_DIR (default: the system temp dir), not
    pytest's basetemp, which keeps only the last three runs of *any* pytest
    on the machine. Deleted after a successful session (see
    pytest_sessionfinish) unless CV_TEST_KEEP_LOGS is set. A test that starts a dedicated server should
    pass this as its log_dir.
    """
    root = Path(os.environ.get("CV_TEST_LOG_DIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    log_dir = Path(tempfile.mkdtemp(prefix=f"cv-test-logs-{worker}-", dir=root))
    request.config.stash[_log_dir_key] = log_dir
    return log_dir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tail of every server log a failed test used to its report
    (works under xdist too, where a worker cannot print to the terminal)."""
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    for name in _SERVER_FIXTURES:
        server: _Logged | None = funcargs.get(name)
        if server is not None:
            report.sections.append((f"{name} log {server.log_path}", tail(server.log_path, 30)))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete the server logs after a clean session; keep them after failures
    and interruptions. trylast: runs after the servers were torn down."""
    log_dir = session.config.stash.get(_log_dir_key, None)
    clean = exitstatus in (0, 5) and session.testsfailed == 0
    if log_dir is not None and clean and not os.environ.get("CV_TEST_KEEP_LOGS"):
        shutil.rmtree(log_dir, ignore_errors=True)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Name the log dir after a failed run (without xdist; workers' failed
    tests carry their server log tails in their own reports)."""
    log_dir = config.stash.get(_log_dir_key, None)
    if exitstatus not in (0, 5) and log_dir is not None:
        terminalreporter.write_sep("-", f"test server logs: {log_dir}")


# -- PostgreSQL ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgDatabase:
    name: str
    dsn: str


@pytest.fixture(scope="session")
def pg_server(server_log_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(log_dir=server_log_dir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_database(request: pytest.FixtureRequest, pg_server: PostgresServer) -> Iterator[PgDatabase]:
    """A fresh database on the shared server, dropped afterwards together with
    any replication slots left on it (a leftover slot would pin WAL for the
    rest of the session)."""
    name = _unique_name(request, "cv", 63)
    dsn = pg_server.create_database(name)
    yield PgDatabase(name=name, dsn=dsn)
    _drop_pg_database(pg_server, name)


def _drop_pg_database(server: PostgresServer, name: str) -> None:
    if not server.running:
        server.start()
    for _ in range(50):
        with contextlib.suppress(Exception):
            server.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                params=(name,),
            )
            server.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                params=(name,),
            )
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            return
        time.sleep(0.1)


# -- MariaDB ------------------------------------------------------------------------


@dataclass(frozen=True)
class MySQLDatabase:
    name: str
    dsn: str


@pytest.fixture(scope="session")
def mariadb_server(server_log_dir: Path) -> Iterator[MariaDBServer]:
    server = MariaDBServer(log_dir=server_log_dir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def mysql_database(
    request: pytest.FixtureRequest, mariadb_server: MariaDBServer
) -> Iterator[MySQLDatabase]:
    """A fresh database on the shared MariaDB server, dropped afterwards."""
    name = _unique_name(request, "cv", 64)
    dsn = mariadb_server.create_database(name)
    yield MySQLDatabase(name=name, dsn=dsn)
    if not mariadb_server.running:
        mariadb_server.start()
    with contextlib.suppress(Exception):
        mariadb_server.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")


# -- Kafka (tansu) --------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker(server_log_dir: Path) -> Iterator[TansuBroker]:
    """A memory-backed broker: stop() loses its data, use pause()/resume() for
    outages, or start a TansuBroker(s3=...) of your own for a durable one."""
    broker = TansuBroker(log_dir=server_log_dir)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses (the broker is shared per session)."""
    return _unique_name(request, "cv", 60)


# -- S3 (moto) ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(server_log_dir: Path) -> Iterator[MotoS3]:
    server = MotoS3(log_dir=server_log_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(request: pytest.FixtureRequest, s3_server: MotoS3) -> str:
    """A fresh, empty bucket on the shared moto server (name: [a-z0-9-], <= 63)."""
    name = _unique_name(request, "cv", 63).replace("_", "-")
    return s3_server.create_bucket(name)
