"""Producer/admin configuration and topic naming (no broker needed; no TLS broker exists
in the test environment, so TLS/SASL options are checked as the kwargs we pass)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.errors import UsageError
from agent.settings import KafkaSecurity, KafkaSettings
from connectors.kafka import ProducerTuning, encode_component, producer_config, table_topic
from connectors.kafka.admin import topic_specs
from connectors.kafka.client_config import kafka_error


def _settings(**kw: object) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=["b1:9093", "b2:9093"], **kw)  # type: ignore[arg-type]


def test_producer_defaults_are_durable() -> None:
    cfg = producer_config(_settings(compression="zstd"), ProducerTuning(), "cv")
    assert cfg["acks"] == "all" and cfg["enable_idempotence"] is True
    assert cfg["max_in_flight_requests_per_connection"] <= 5
    assert cfg["compression_type"] == "zstd"
    assert cfg["allow_auto_create_topics"] is False
    assert cfg["security_protocol"] == "PLAINTEXT"
    assert (
        producer_config(_settings(compression="none"), ProducerTuning(), "cv")["compression_type"]
        is None
    )
    with pytest.raises(ValueError):
        producer_config(_settings(), ProducerTuning(max_in_flight=6), "cv")


def test_sasl_ssl_pass_through() -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username="agent",
        password=SecretStr("s3cret"),
        ca_file=Path("/etc/cv/ca.pem"),
        cert_file=Path("/etc/cv/client.pem"),
        key_file=Path("/etc/cv/client.key"),
        check_hostname=False,
    )
    cfg = producer_config(_settings(security=security), ProducerTuning(), "cv")
    assert cfg["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert cfg["security_protocol"] == "SASL_SSL"
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl_plain_username"] == "agent"
    assert cfg["sasl_plain_password"] == "s3cret"
    assert cfg["ssl_cafile"] == "/etc/cv/ca.pem"
    assert cfg["ssl_certfile"] == "/etc/cv/client.pem"
    assert cfg["ssl_keyfile"] == "/etc/cv/client.key"
    assert cfg["ssl_check_hostname"] is False


def test_ssl_without_sasl_and_sasl_plaintext() -> None:
    ssl = producer_config(
        _settings(security=KafkaSecurity(protocol="SSL", ca_file=Path("/ca"))),
        ProducerTuning(),
        "x",
    )
    assert ssl["security_protocol"] == "SSL" and ssl["ssl_cafile"] == "/ca"
    assert "sasl_mechanism" not in ssl
    plain = producer_config(
        _settings(
            security=KafkaSecurity(
                protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN",
                username="u",
                password=SecretStr("p"),
            )
        ),
        ProducerTuning(),
        "x",
    )
    assert plain["sasl_mechanism"] == "PLAIN" and "ssl_cafile" not in plain


def test_errors_name_brokers_not_secrets() -> None:
    err = kafka_error(_settings(), "sending to t", RuntimeError("boom\nsecond line"))
    assert str(err) == "Kafka at b1:9093,b2:9093: sending to t failed: RuntimeError: boom"
    assert err.exit_code == 3


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("customers", "customers"),
        ("loyalty_ledger", "loyalty_ledger"),
        ("order items", "order-20items"),
        ("a.b", "a-2eb"),
        ("a-b", "a-2db"),
        ("crème", "cr-c3-a8me"),
        ("Ünïcode", "-c3-9cn-c3-afcode"),
    ],
)
def test_component_encoding(name: str, encoded: str) -> None:
    assert encode_component(name) == encoded


def test_topic_names_distinct_and_bounded() -> None:
    names = ["a.b", "a-2eb", "a_b", "a b", "a-b", "a--b"]
    topics = {table_topic("cv", "db", "s", n) for n in names}
    assert len(topics) == len(names)
    assert table_topic("cv", "shop", None, "t") == "cv.shop.t"
    long_a = table_topic("cv", "db", "s", "x" * 300)
    long_b = table_topic("cv", "db", "s", "x" * 301)
    assert len(long_a) == 249 and len(long_b) == 249 and long_a != long_b
    assert "-h" in long_a[-22:]


def test_dot_underscore_clash_refused() -> None:
    with pytest.raises(UsageError, match="differ only by"):
        topic_specs(_settings(), "db", [("s", "a_b"), ("s_a", "b")], timedelta(days=1))
