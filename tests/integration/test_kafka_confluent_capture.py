"""`changevault run` with kafka.producer: confluent-kafka, PG -> sealed -> Kafka + archive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from agent.settings import KafkaSettings
from connectors.kafka import TopicAdmin, read_topics
from tests.e2e.agent_process import AgentProcess, events, make_keys, wait_for, write_config


def checkpoint_lsn(state: Path) -> str | None:
    try:
        doc = json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return str(doc["position"]["text"])


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def test_capture_through_confluent_backend(
    pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, points int)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ann', 100)")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    kafka: dict[str, Any] = {"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
             "replication_factor": 1, "min_insync_replicas": 1, "producer": "confluent-kafka",
             "partitions": 3}  # fmt: skip
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_confluent",
                "publication": "cv_confluent"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state, kafka=kafka,
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO accounts SELECT g, 'u' || g, g FROM generate_series(2, 301) g")
            for _ in range(3):  # per-key order: three updates of the same rows
                conn.execute("UPDATE accounts SET points = points + 1 WHERE id <= 50")
            conn.execute("DELETE FROM accounts WHERE id = 7")
            conn.execute("TRUNCATE accounts")
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        wait_for(
            lambda: (cp := checkpoint_lsn(state)) is not None and lsn_int(cp) >= lsn_int(end),
            90, "checkpoint past the workload",
        )  # fmt: skip
    finally:
        code = agent.stop()
    assert code == 0, agent.log()

    archived = [e for e in events(config, keys) if e["op"] != "r"]
    from_kafka = events(config, keys, "--from-kafka")
    project = [(e["op"], e["key"], (e["after"] or {}).get("points")) for e in archived]
    assert [(e["op"], e["key"], (e["after"] or {}).get("points")) for e in from_kafka] == project
    assert len([e for e in archived if e["op"] == "c"]) == 300
    assert len([e for e in archived if e["op"] == "u"]) == 150
    assert [e["op"] for e in archived[-2:]] == ["d", "t"]

    settings = KafkaSettings.model_validate(kafka)
    admin = TopicAdmin(settings)
    topics = [t for t in admin.list_topics() if t.startswith(kafka_topic_prefix + ".")]
    admin.close()
    table_topic = next(t for t in topics if t.endswith(".accounts"))
    records = list(read_topics(settings, [table_topic]))
    # The delete is followed by a tombstone under the same key; the truncate
    # reached every partition under the reserved key.
    tombstones = [r for r in records if r.value is None]
    assert len(tombstones) == 1
    last_per_partition = {r.partition: r for r in records}
    assert sorted(last_per_partition) == [0, 1, 2]
    assert len({r.key for r in last_per_partition.values()}) == 1
    assert all(r.value is not None for r in last_per_partition.values())
    assert all(dict(r.headers).get("cv-format") for r in records)
    # Record timestamps are commit times: never decreasing per partition.
    for partition in {r.partition for r in records}:
        stamps = [r.timestamp_ms for r in records if r.partition == partition]
        assert stamps == sorted(stamps)
