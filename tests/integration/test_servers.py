"""Smoke tests of the real-server fixtures: each server answers and is
configured the way the connectors need (see tests/servers/)."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import psycopg
import pymysql
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaTimeoutError

from tests.conftest import MySQLDatabase, PgDatabase
from tests.servers.mariadb import MariaDBServer
from tests.servers.moto import MotoS3
from tests.servers.postgres import PostgresServer
from tests.servers.tansu import TansuBroker


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


# -- Kafka (tansu) ---------------------------------------------------------------------


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def _produce_and_consume(
    bootstrap: str, topic: str, values: list[bytes], group: str | None = None
) -> list[bytes]:
    _create_topic(bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, key=b"k", value=value).get(timeout=10)
    finally:
        producer.close()
    return _consume(bootstrap, topic, len(values), group)


def _consume(bootstrap: str, topic: str, expected: int, group: str | None = None) -> list[bytes]:
    """Read `expected` records from partition 0: through a consumer group when
    `group` is given (tansu needs a small session timeout), else by assignment,
    which skips the group join and is much faster."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-{group}" if group else None,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        consumer_timeout_ms=10000,
    )
    try:
        if group:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, 0)])
        seen: list[bytes] = []
        for record in consumer:
            seen.append(record.value)
            if len(seen) >= expected:
                break
        return seen
    finally:
        consumer.close()


def test_kafka_broker_produces_and_consumes(
    kafka_broker: TansuBroker, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}.smoke"
    assert _produce_and_consume(kafka_broker.bootstrap, topic, [b"one"], group="g") == [b"one"]


def test_kafka_broker_pause_is_an_outage_that_keeps_records(
    kafka_broker: TansuBroker, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}.paused"
    _create_topic(kafka_broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        producer.send(topic, value=b"before").get(timeout=10)
        kafka_broker.pause()
        try:
            with pytest.raises(KafkaTimeoutError):
                producer.send(topic, value=b"during").get(timeout=2)
        finally:
            kafka_broker.resume()
        producer.flush(timeout=30)  # the record sent during the outage is delivered now
    finally:
        producer.close()
    assert _consume(kafka_broker.bootstrap, topic, 2) == [b"before", b"during"]


def test_tansu_on_s3_keeps_records_across_restart(
    s3_server: MotoS3, server_log_dir: Path, kafka_topic_prefix: str
) -> None:
    with TansuBroker(log_dir=server_log_dir, s3=s3_server, name="tansu-s3") as broker:
        topic = f"{kafka_topic_prefix}.durable"
        assert _produce_and_consume(broker.bootstrap, topic, [b"kept"]) == [b"kept"]
        port = broker.port
        broker.restart()
        assert broker.port == port
        assert _consume(broker.bootstrap, topic, 1) == [b"kept"]


# -- S3 (moto) -------------------------------------------------------------------------


def test_s3_put_and_get(s3_server: MotoS3, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a/b.bin", Body=b"payload")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.bin")["Body"].read() == b"payload"


def test_s3_honours_if_none_match_conditional_create(s3_server: MotoS3, s3_bucket: str) -> None:
    """The archive lease relies on conditional create; moto implements it."""
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="lease", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.put_object(Bucket=s3_bucket, Key="lease", Body=b"second", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3_bucket, Key="lease")["Body"].read() == b"first"


def test_s3_pause_hangs_requests_and_resume_keeps_objects(
    s3_server: MotoS3, s3_bucket: str
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    impatient = s3_server.client(connect_timeout=1, read_timeout=1, retries={"max_attempts": 0})
    s3_server.pause()
    try:
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            impatient.get_object(Bucket=s3_bucket, Key="k")
    finally:
        s3_server.resume()
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"
