"""PostgreSQL -> sealed -> Kafka + archive, read back exactly, nothing readable leaked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config

MARKER = "zq-secret-marker-7781"


def checkpoint_lsn(state: Path) -> str | None:
    try:
        return json.loads((state / "checkpoint.json").read_text())["position"]["text"]
    except (FileNotFoundError, ValueError):
        return None


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def test_round_trip_archive_and_kafka_in_commit_order(pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigint PRIMARY KEY, name text, points int)")
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers(id), total numeric(12,2))")
        conn.execute("INSERT INTO customers VALUES (1, 'ann', 100), (2, 'bob', 50)")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_e2e", "publication": "cv_e2e"},
        archive_url=(tmp_path / "archive").as_uri(),
        keys=keys,
        state_dir=state,
        kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
               "replication_factor": 1, "min_insync_replicas": 1},
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers VALUES (3, %s, 10)", (MARKER,))
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (10, 1, 12.50), (11, 3, 99.99)")
                conn.execute("UPDATE customers SET points = points - 10 WHERE id = 1")
            conn.execute("UPDATE customers SET id = 4 WHERE id = 2")  # key change
            conn.execute("DELETE FROM orders WHERE id = 10")
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        wait_for(lambda: (cp := checkpoint_lsn(state)) is not None and lsn_int(cp) >= lsn_int(end), 60, "checkpoint past the workload")
    finally:
        code = agent.stop()
    assert code == 0, agent.log()

    history = events(config, keys)
    snapshot = [e for e in history if e["op"] == "r"]
    changes = [e for e in history if e["op"] != "r"]
    assert sorted(e["after"]["id"] for e in snapshot) == [1, 2]
    assert [(e["op"], e["source"]["table"], e["key"]) for e in changes] == [
        ("c", "customers", {"id": 3}),
        ("c", "orders", {"id": 10}),
        ("c", "orders", {"id": 11}),
        ("u", "customers", {"id": 1}),
        ("u", "customers", {"id": 4}),
        ("d", "orders", {"id": 10}),
    ]
    assert changes[1]["after"]["total"] == "12.50"
    assert changes[3]["after"]["points"] == 90
    # commit order: positions never decrease, seq restarts per transaction
    positions = [lsn_int(e["source"]["position"]) for e in changes]
    assert positions == sorted(positions)
    assert len({e["id"] for e in changes}) == len(changes)

    from_kafka = events(config, keys, "--from-kafka")
    kafka_ops = [(e["op"], e["source"]["table"], e["key"]) for e in from_kafka]
    # the key change arrives as delete of the old key + insert of the new one
    assert kafka_ops == [
        ("c", "customers", {"id": 3}),
        ("c", "orders", {"id": 10}),
        ("c", "orders", {"id": 11}),
        ("u", "customers", {"id": 1}),
        ("d", "customers", {"id": 2}),
        ("c", "customers", {"id": 4}),
        ("d", "orders", {"id": 10}),
    ]

    verify = cli(["verify", "-c", str(config)])
    assert verify.returncode == 0, verify.stderr
    decrypt = cli(["verify", "-c", str(config), "--decrypt", "--private-key", str(keys["archive.key"])])
    assert decrypt.returncode == 0, decrypt.stderr

    # Leak check: the marker is in no archive byte and no Kafka key, value or header.
    for f in (tmp_path / "archive").rglob("*"):
        if f.is_file():
            assert MARKER.encode() not in f.read_bytes(), f
    from agent.settings import KafkaSettings
    from connectors.kafka.consumer import read_topics

    ks = KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], topic_prefix=kafka_topic_prefix,
                       replication_factor=1, min_insync_replicas=1)
    from connectors.kafka.admin import TopicAdmin

    admin = TopicAdmin(ks)
    topics = [t for t in admin.list_topics() if t.startswith(kafka_topic_prefix + ".")]
    admin.close()
    raw = list(read_topics(ks, topics))
    assert raw
    for rec in raw:
        for blob in (rec.key or b"", rec.value or b"", *[v for _k, v in rec.headers]):
            assert MARKER.encode() not in blob
            assert b"ann" not in blob


def test_a_new_host_with_an_empty_state_dir_resumes_from_the_archive(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    keys = make_keys(tmp_path / "keys")

    def config_for(state: Path) -> Path:
        return write_config(
            tmp_path / f"{state.name}.yaml",
            source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_newhost", "publication": "cv_newhost"},
            archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
        )

    def run_batch(config: Path, state: Path, first: int) -> None:
        agent = AgentProcess(config, tmp_path / f"{state.name}.log")
        try:
            wait_for(lambda: checkpoint_lsn(state) is not None, 60, "agent start")
            with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
                for i in range(first, first + 5):
                    conn.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
                end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            wait_for(lambda: lsn_int(checkpoint_lsn(state) or "0/0") >= lsn_int(end), 60, "durable")
        finally:
            assert agent.stop() == 0, agent.log()

    host_a = tmp_path / "host-a"
    run_batch(config_for(host_a), host_a, 1)
    host_b = tmp_path / "host-b"  # state_dir lost: another host, same slot and archive
    run_batch(config_for(host_b), host_b, 6)
    history = events(config_for(host_b), keys)
    assert [e["key"]["id"] for e in history if e["op"] == "c"] == list(range(1, 11))
