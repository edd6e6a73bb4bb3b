"""A real TLS connection to a private MariaDB with a CA generated here.

The agent's user is created with REQUIRE SSL, so `check` and a `run` that
captures a change prove every connection — queries, snapshot and the binlog
stream (mysql-replication) — was made over TLS with our settings.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from cryptography import x509

from agent.settings import SourceSettings, TlsSettings
from connectors.mysql.connection import connect_kwargs
from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config
from tests.integration.test_tls_postgres import TlsFiles
from tests.servers.mariadb import MariaDBServer

pytestmark = pytest.mark.xdist_group("tls_mysql")
USER, PASSWORD = "cvtls", "tls-pw-123"


@pytest.fixture(scope="module")
def tls_mariadb() -> Iterator[tuple[MariaDBServer, TlsFiles]]:
    directory = Path(tempfile.mkdtemp(prefix="cv-tls-mariadb-"))
    files = TlsFiles(directory, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = MariaDBServer(name="mariadb-tls", extra_options=(
        f"--ssl-ca={files.ca}", f"--ssl-cert={files.server_cert}", f"--ssl-key={files.server_key}",
    ))
    try:
        server.start()
        server.create_database("shop")
        server.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL")
        server.execute(f"GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, "
                       f"BINLOG MONITOR ON *.* TO '{USER}'@'%'")
        yield server, files
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def dsn(server: MariaDBServer) -> str:
    return f"mysql://{USER}@127.0.0.1:{server.port}/shop"


def test_pymysql_gets_a_verifying_context(tls_mariadb: tuple[MariaDBServer, TlsFiles]) -> None:
    server, files = tls_mariadb
    src = SourceSettings(type="mysql", dsn=f"mysql://{USER}:{PASSWORD}@127.0.0.1:{server.port}/shop",
                         tls=TlsSettings(mode="verify-full", ca_file=files.ca))
    conn = pymysql.connect(**connect_kwargs(src))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cur.fetchone()
        assert row is not None and row[1], row
    finally:
        conn.close()
    # The user requires TLS: without it, the server refuses us.
    plain = SourceSettings(type="mysql", dsn=src.dsn, tls=TlsSettings(mode="disable"))
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**connect_kwargs(plain))
    # Another CA: the certificate does not verify.
    wrong = SourceSettings(type="mysql", dsn=src.dsn,
                           tls=TlsSettings(mode="verify-ca", ca_file=files.other_ca))
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**connect_kwargs(wrong))


def test_check_and_run_with_tls_required(tls_mariadb: tuple[MariaDBServer, TlsFiles], tmp_path: Path) -> None:
    server, files = tls_mariadb
    server.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))", db="shop")
    server.execute("INSERT INTO t VALUES (1, 'a')", db="shop")
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "mysql", "dsn": dsn(server), "password_file": str(secret), "server_id": 7411,
                "tls": {"mode": "verify-full", "ca_file": str(files.ca)}},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    check = cli(["check", "-c", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: (state / "checkpoint.json").exists(), 60, "initial snapshot")
        first = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
        server.execute("INSERT INTO t VALUES (2, 'b')", db="shop")
        wait_for(lambda: json.loads((state / "checkpoint.json").read_text())["position"]["text"] != first,
                 60, "the insert through the TLS binlog stream")
    finally:
        assert agent.stop() == 0, agent.log()
    assert [(e["op"], e["key"]) for e in events(config, keys)] == [("r", {"id": 1}), ("c", {"id": 2})]
    assert PASSWORD not in (tmp_path / "agent.log").read_text()
