"""changevault_sink_latency_seconds is each sink's own commit -> durable time:
Kafka's is its acknowledgement, the archive's waits for the segment to close."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    checkpoint_lsn,
    create_schema,
    drain_and_stop,
    metric,
    scrape,
    start_with_metrics,
    wait_caught_up,
)

SEGMENT_AGE = 3.0
TRANSACTIONS = 12


def test_each_sink_reports_its_own_commit_to_durable_latency(
    pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    create_schema(pg_database.dsn)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"

    def configure(port: int) -> Path:
        config = write_config(
            tmp_path / "cv.yaml",
            source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_latency",
                    "publication": "cv_latency"},
            archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
            kafka={"bootstrap_servers": [kafka_broker.bootstrap],
                   "topic_prefix": kafka_topic_prefix,
                   "replication_factor": 1, "min_insync_replicas": 1},
            extra={"metrics_listen": f"127.0.0.1:{port}"},
        )
        text = config.read_text().replace("segment_max_age: 1s", f"segment_max_age: {SEGMENT_AGE}s")
        config.write_text(text)
        return config

    agent, port = start_with_metrics(configure, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        before = {s: _count(port, s) for s in ("kafka", "archive")}
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            for i in range(TRANSACTIONS):
                conn.execute("INSERT INTO items (id, val) VALUES (%s, %s)", (10_000 + i, i))
                time.sleep(0.2)
        wait_caught_up(pg_database.dsn, state)
        text = scrape(port)
        means = {}
        for sink in ("kafka", "archive"):
            label = f'sink="{sink}"'
            count = metric(text, "changevault_sink_latency_seconds_count", label) or 0.0
            total = metric(text, "changevault_sink_latency_seconds_sum", label) or 0.0
            assert count - before[sink] >= TRANSACTIONS, (sink, count, before[sink])
            means[sink] = total / count
        # Kafka acknowledges within a second; the archive holds each change until
        # its segment closes (up to segment_max_age), so on average far later.
        assert means["kafka"] < 1.0, means
        assert means["archive"] > means["kafka"] + SEGMENT_AGE / 4, means
        assert drain_and_stop(agent, pg_database.dsn, state) == 0, agent.log()[-3000:]
    finally:
        if agent.alive():
            agent.kill()


def _count(port: int, sink: str) -> float:
    return metric(scrape(port), "changevault_sink_latency_seconds_count", f'sink="{sink}"') or 0.0
