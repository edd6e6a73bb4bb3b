"""A running agent's /metrics shows every CONTRACT metric with live values."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.agent_process import AgentProcess, make_keys, wait_for, write_config

CONTRACT_METRICS = [
    "changevault_up",
    "changevault_events_total",
    "changevault_transactions_total",
    "changevault_source_lag_seconds",
    "changevault_source_behind_bytes",
    "changevault_checkpoint_timestamp_seconds",
    "changevault_sink_up",
    "changevault_sink_errors_total",
    "changevault_archive_bytes_total",
    "changevault_archive_segments_total",
    "changevault_last_snapshot_timestamp_seconds",
    "changevault_oldest_restorable_timestamp_seconds",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def status(port: int, path: str) -> int:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_every_contract_metric_is_live(pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE points (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO points VALUES (1, 1)")
    port = free_port()
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_metrics", "publication": "cv_metrics"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
        kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
               "replication_factor": 1, "min_insync_replicas": 1},
        extra={"metrics_listen": f"127.0.0.1:{port}"},
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: (state / "checkpoint.json").exists(), 60, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            for i in range(2, 12):
                conn.execute("INSERT INTO points VALUES (%s, %s)", (i, i))
            conn.execute("UPDATE points SET n = 0 WHERE id = 1")

        def events_counted() -> bool:
            got = scrape(port).get("changevault_events_total", [])
            return sum(v for labels, v in got if labels.get("op") == "c") >= 10 and any(
                labels.get("op") == "u" for labels, _ in got)

        wait_for(events_counted, 60, "events counted")
        wait_for(lambda: sum(v for _l, v in scrape(port).get("changevault_archive_segments_total", [])) >= 1,
                 60, "a segment written")
        samples = scrape(port)
        for name in CONTRACT_METRICS:
            assert name in samples, f"{name} missing from /metrics"
        value = {name: samples[name][0][1] for name in CONTRACT_METRICS if len(samples[name]) == 1}
        assert value["changevault_up"] == 1
        assert value["changevault_transactions_total"] >= 11
        assert value["changevault_checkpoint_timestamp_seconds"] > 1.7e9
        assert value["changevault_last_snapshot_timestamp_seconds"] > 1.7e9
        assert value["changevault_oldest_restorable_timestamp_seconds"] > 1.7e9
        assert value["changevault_archive_bytes_total"] > 0
        assert value["changevault_source_lag_seconds"] >= 0
        assert value["changevault_source_behind_bytes"] >= 0
        ups = {labels["sink"]: v for labels, v in samples["changevault_sink_up"]}
        assert ups == {"archive": 1.0, "kafka": 1.0}
        tables = {labels["table"] for labels, _v in samples["changevault_events_total"]}
        assert "public.points" in tables
        assert status(port, "/healthz") == 200
        assert status(port, "/readyz") == 200
    finally:
        assert agent.stop() == 0, agent.log()
    cp = json.loads((state / "checkpoint.json").read_text())
    assert cp["position"]["text"]
