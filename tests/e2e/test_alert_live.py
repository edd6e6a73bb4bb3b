"""A real Prometheus scrapes a running `changevault run` (PostgreSQL -> Kafka on
tansu + archive): with the broker frozen, ChangevaultSinkFailing{sink="kafka"}
becomes active; after the broker is back, it clears.

The rules are config/alerts.yaml with the alert's `for:` and its error-rate
window shortened, so the test sees both edges within a minute or two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agent_process import make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    Workload,
    checkpoint_lsn,
    create_schema,
    drain_and_stop,
    start_with_metrics,
)
from tests.integration.test_alert_rules import ALERTS, PrometheusServer, shortened_for

ALERT = "ChangevaultSinkFailing"


def shortened_rules() -> str:
    """config/alerts.yaml with ChangevaultSinkFailing's `for:` 3s and its error window 20s."""
    doc = yaml.safe_load(shortened_for(ALERTS.read_text(), ALERT, "3s"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                assert "[5m]" in rule["expr"], rule["expr"]
                rule["expr"] = rule["expr"].replace("[5m]", "[20s]")
    return str(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def running_agent(pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str,
                  tmp_path: Path) -> Iterator[tuple[Any, int, Workload]]:
    create_schema(pg_database.dsn)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"

    def configure(port: int) -> Path:
        return write_config(
            tmp_path / "cv.yaml",
            source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_alert", "publication": "cv_alert"},
            archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
            kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
                   "replication_factor": 1, "min_insync_replicas": 1},
            extra={"metrics_listen": f"127.0.0.1:{port}"},
        )

    agent, port = start_with_metrics(configure, tmp_path / "agent.log")
    workload = Workload(pg_database.dsn, pause=0.2)
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        workload.start()
        yield agent, port, workload
        workload.stop()
        assert drain_and_stop(agent, pg_database.dsn, state, timeout=120) == 0, agent.log()[-3000:]
    finally:
        workload._stop.set()
        if agent.alive():
            agent.kill()


@pytest.mark.timeout(240)
def test_sink_failing_alert_follows_a_frozen_broker(
    running_agent: tuple[Any, int, Workload], kafka_broker: Any, tmp_path: Path
) -> None:
    agent, port, _workload = running_agent
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    prometheus = PrometheusServer(prom_dir, f"127.0.0.1:{port}", shortened_rules())
    try:
        prometheus.wait_for(
            "the running agent scraped with both sinks up",
            lambda: len(prometheus.query('changevault_sink_up{job="changevault"} == 1')) == 2,
        )
        prometheus.wait_for("ChangevaultSinkFailing inactive while healthy",
                            lambda: prometheus.alerts(ALERT) == [], timeout=40)

        def kafka_alert_firing() -> bool:
            return any(a["state"] == "firing" and a["labels"].get("sink") == "kafka"
                       for a in prometheus.alerts(ALERT))

        kafka_broker.pause()
        try:
            prometheus.wait_for(f"{ALERT}{{sink=kafka}} firing", kafka_alert_firing, timeout=90)
        finally:
            kafka_broker.resume()
        alerts = prometheus.alerts(ALERT)
        assert {a["labels"]["sink"] for a in alerts} == {"kafka"}, alerts
        assert alerts[0]["labels"]["severity"] == "critical"
        assert agent.alive(), agent.log()[-3000:]
        # Delivery resumes; with no new errors for the window, the alert clears.
        prometheus.wait_for(f"{ALERT} cleared after the broker resumed",
                            lambda: prometheus.alerts(ALERT) == [], timeout=120)
        assert len(prometheus.query('changevault_sink_up{sink="kafka"} == 1')) == 1
    finally:
        prometheus.stop()
