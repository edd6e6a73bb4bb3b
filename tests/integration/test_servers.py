"""Smoke tests of the real-server fixtures: each server answers and is
configured the way the connectors need (see tests/servers/)."""

from __future__ import annotations

import psycopg
import pymysql
import pytest

from tests.conftest import MySQLDatabase, PgDatabase
from tests.servers.mariadb import MariaDBServer
from tests.servers.postgres import PostgresServer


def test_postgres_is_configured_for_logical_decoding(
    pg_server: PostgresServer, pg_database: PgDatabase
) -> None:
    assert pg_server.execute("SHOW wal_level") == [("logical",)]
    assert int(pg_server.execute("SHOW max_replication_slots")[0][0]) >= 20
    assert int(pg_server.execute("SHOW max_wal_senders")[0][0]) >= 20
    pg_server.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", pg_database.name)
    pg_server.execute("CREATE PUBLICATION p FOR TABLE t", pg_database.name)
    pg_server.execute(
        "SELECT pg_create_logical_replication_slot('smoke', 'pgoutput')", pg_database.name
    )
    pg_server.execute("INSERT INTO t VALUES (1, 'a')", pg_database.name)
    changes = pg_server.execute(
        "SELECT count(*) FROM pg_logical_slot_get_binary_changes("
        "'smoke', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')",
        pg_database.name,
    )
    assert changes[0][0] >= 3  # BEGIN, RELATION, INSERT, COMMIT


def test_postgres_accepts_replication_connections(
    pg_server: PostgresServer, pg_database: PgDatabase
) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True, replication="database") as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None and row[3] == pg_database.name


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_keeps_port_and_data(
    pg_server: PostgresServer, pg_database: PgDatabase, mode: str
) -> None:
    port = pg_server.port
    pg_server.execute("CREATE TABLE kept (id int PRIMARY KEY)", pg_database.name)
    pg_server.execute("INSERT INTO kept VALUES (7)", pg_database.name)
    pg_server.restart(mode)  # type: ignore[arg-type]
    assert pg_server.port == port
    assert pg_server.execute("SELECT id FROM kept", pg_database.name) == [(7,)]


def test_mariadb_is_configured_for_binlog_capture(mariadb_server: MariaDBServer) -> None:
    rows = mariadb_server.execute(
        "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata,"
        " @@gtid_strict_mode, @@server_id"
    )
    assert rows == [(1, "ROW", "FULL", "FULL", 1, 1)]


def test_mariadb_replication_user_reads_binlog_position(
    mariadb_server: MariaDBServer, mysql_database: MySQLDatabase
) -> None:
    mariadb_server.execute("CREATE TABLE t (id INT PRIMARY KEY)", mysql_database.name)
    mariadb_server.execute("INSERT INTO t VALUES (1)", mysql_database.name)
    with (
        pymysql.connect(
            host=mariadb_server.host,
            port=mariadb_server.port,
            user=mariadb_server.repl_user,
            password=mariadb_server.repl_password,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SHOW MASTER STATUS")
        file, position = cur.fetchone()[:2]  # type: ignore[index]
        cur.execute("SELECT @@gtid_binlog_pos")
        gtid = cur.fetchone()[0]  # type: ignore[index]
    assert (mariadb_server.binlog_dir / file).is_file()
    assert position > 4
    assert gtid.startswith("0-1-")


@pytest.mark.parametrize("mode", ["clean", "kill"])
def test_mariadb_restart_keeps_port_and_data(
    mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, mode: str
) -> None:
    port = mariadb_server.port
    mariadb_server.execute("CREATE TABLE kept (id INT PRIMARY KEY)", mysql_database.name)
    mariadb_server.execute("INSERT INTO kept VALUES (7)", mysql_database.name)
    mariadb_server.restart(mode)  # type: ignore[arg-type]
    assert mariadb_server.port == port
    assert mariadb_server.execute("SELECT id FROM kept", mysql_database.name) == [(7,)]
