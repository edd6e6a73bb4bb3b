"""The confluent-kafka producer backend against the real tansu broker."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agent.errors import ServiceError
from agent.settings import KafkaSecurity, KafkaSettings
from connectors.kafka import Delivered, TopicAdmin, read_topics, table_topic, topic_specs
from connectors.kafka.confluent_producer import (
    ConfluentRecordProducer,
    confluent_config,
    security_config,
)
from connectors.kafka.producer import ProducerTuning, RecordProducer
from connectors.kafka.producer_factory import make_producer


def _settings(broker: Any, **overrides: Any) -> KafkaSettings:
    base: dict[str, Any] = {
        "bootstrap_servers": [broker.bootstrap],
        "replication_factor": 1,
        "min_insync_replicas": 1,
        "producer": "confluent-kafka",
    }
    return KafkaSettings(**{**base, **overrides})


def _make_topic(broker: Any, prefix: str, partitions: int = 1) -> tuple[KafkaSettings, str]:
    settings = _settings(broker, topic_prefix=prefix, partitions=partitions, compression="zstd")
    specs = topic_specs(settings, "shop", [("public", "events")], timedelta(days=1))
    admin = TopicAdmin(settings)
    admin.ensure_topics(specs)
    admin.close()
    return settings, table_topic(prefix, "shop", "public", "events")


def test_factory_chooses_backend(kafka_broker: Any) -> None:
    fast = make_producer(_settings(kafka_broker))
    slow = make_producer(_settings(kafka_broker, producer="kafka-python"))
    try:
        assert isinstance(fast, ConfluentRecordProducer)
        assert isinstance(slow, RecordProducer)
    finally:
        fast.close(5)
        slow.close(5)


def test_round_trip_headers_timestamps_tombstones_partitions(
    kafka_broker: Any, kafka_topic_prefix: str
) -> None:
    settings, topic = _make_topic(kafka_broker, kafka_topic_prefix, partitions=2)
    producer = ConfluentRecordProducer(settings)
    delivered: list[Delivered] = []
    errors: list[ServiceError] = []
    sent = [
        (b"k1", b"v1", [("cv-format", b"\x01"), ("cv-key-id", b"abc")], 1_700_000_000_123, None),
        (b"k1", None, [], 1_700_000_000_124, None),  # tombstone
        (b"k2", b"\x00" * 300, [], 1_700_000_000_125, 1),
        (b"reserved", b"t", [("cv-format", b"\x01")], 1_700_000_000_126, 0),
    ]
    futures = []
    try:
        for key, value, headers, ts, partition in sent:
            futures.append(producer.send(
                topic, key, value, headers, ts, partition,
                on_delivery=lambda d, e: delivered.append(d) if d else errors.append(e),  # type: ignore[arg-type]
            ))  # fmt: skip
        producer.flush(10)
        assert producer.partitions_for(topic) == {0, 1}
    finally:
        producer.close(5)
    assert errors == []
    assert len(delivered) == 4
    results = [f.result(1) for f in futures]
    assert [r.timestamp_ms for r in results] == [s[3] for s in sent]
    assert results[2].partition == 1 and results[3].partition == 0
    got = list(read_topics(settings, [topic], idle_timeout=10))
    assert len(got) == 4
    by_ts = {r.timestamp_ms: r for r in got}
    for key, value, headers, ts, partition in sent:
        rec = by_ts[ts]
        assert (rec.key, rec.value, rec.headers or []) == (key, value, headers)
        if partition is not None:
            assert rec.partition == partition
    assert by_ts[1_700_000_000_124].value is None


def test_per_key_order(kafka_broker: Any, kafka_topic_prefix: str) -> None:
    settings, topic = _make_topic(kafka_broker, kafka_topic_prefix, partitions=3)
    producer = ConfluentRecordProducer(settings)
    try:
        for i in range(5000):
            key = f"key-{i % 7}".encode()
            producer.send(topic, key, str(i).encode(), [], 1_700_000_000_000 + i)
        producer.flush(30)
    finally:
        producer.close(5)
    seen: dict[bytes, list[int]] = {}
    partitions: dict[bytes, set[int]] = {}
    for rec in read_topics(settings, [topic], idle_timeout=10):
        assert rec.key is not None and rec.value is not None
        seen.setdefault(rec.key, []).append(int(rec.value))
        partitions.setdefault(rec.key, set()).add(rec.partition)
    assert sum(len(v) for v in seen.values()) == 5000
    for key, values in seen.items():
        assert values == sorted(values)
        assert len(partitions[key]) == 1


def test_undeliverable_record_fails_in_callback_one_line() -> None:
    """No broker listens: the record fails after delivery.timeout.ms, through the callback."""
    settings = KafkaSettings(
        bootstrap_servers=["127.0.0.1:1"], replication_factor=1, min_insync_replicas=1,
        producer="confluent-kafka",
        security=KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                               username="cv", password=SecretStr("hunter2-secret")),
    )  # fmt: skip
    tuning = ProducerTuning(delivery_timeout_ms=1500, request_timeout_ms=1000)
    producer = ConfluentRecordProducer(settings, tuning=tuning)
    errors: list[ServiceError] = []
    try:
        future = producer.send("t", b"k", b"v", [], 1_700_000_000_000,
                               on_delivery=lambda d, e: errors.append(e) if e else None)
        with pytest.raises(ServiceError):
            future.result(20)
    finally:
        producer.close(1)
    assert len(errors) == 1
    message = str(errors[0])
    assert "\n" not in message and "127.0.0.1:1" in message
    assert "hunter2" not in message


def test_security_and_tuning_mapping() -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="cv",
        password=SecretStr("pw"), ca_file=Path("/etc/ca.pem"), cert_file=Path("/etc/c.pem"),
        key_file=Path("/etc/k.pem"),
        check_hostname=False,
    )  # fmt: skip
    assert security_config(security) == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "none",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/c.pem",
        "ssl.key.location": "/etc/k.pem",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "cv",
        "sasl.password": "pw",
    }
    settings = KafkaSettings(bootstrap_servers=["a:1", "b:2"], replication_factor=1,
                             min_insync_replicas=1, compression="none")
    conf = confluent_config(settings, ProducerTuning(linger_ms=7), "me")
    assert conf["bootstrap.servers"] == "a:1,b:2"
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    assert conf["compression.type"] == "none" and conf["linger.ms"] == 7
    assert conf["security.protocol"] == "PLAINTEXT"
    with pytest.raises(ValueError):
        confluent_config(settings, ProducerTuning(max_in_flight=6), "me")
