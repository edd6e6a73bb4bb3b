"""The broker and the S3 endpoint each frozen for 30 s during a load: nothing lost,
the checkpoint held meanwhile, the outage visible in /metrics, and recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agent_process import make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    Workload,
    assert_exactly,
    change_ops,
    checkpoint_lsn,
    create_schema,
    drain_and_stop,
    fold_items,
    metric,
    read_events,
    scrape,
    start_with_metrics,
    table_state,
)
from tests.servers.moto import MotoS3

OUTAGE = 30.0


@dataclass
class Sample:
    at: float
    sink_up: float | None
    errors: float | None


@dataclass
class MetricsWatch:
    """Scrapes /metrics twice a second in the background."""

    port: int
    sink: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MetricsWatch:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                text = scrape(self.port)
            except OSError:
                continue
            label = f'sink="{self.sink}"'
            self.samples.append(Sample(time.monotonic(), metric(text, "changevault_sink_up", label),
                                       metric(text, "changevault_sink_errors_total", label)))

    def during(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def _run_outage(tmp_path: Path, dsn: str, configure: Callable[[int], Path], keys: dict[str, Path],
                sink: str, freeze: Any, thaw: Any, env: dict[str, str] | None = None) -> None:
    state = tmp_path / "state"
    agent, port = start_with_metrics(configure, tmp_path / "agent.log", env=env)
    config = tmp_path / "cv.yaml"
    workload = Workload(dsn, pause=0.05)
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        workload.start()
        with MetricsWatch(port, sink) as watch:
            workload.run_for(3.0)
            wait_for(lambda: (watch.samples[-1].sink_up if watch.samples else None) == 1, 30,
                     f"sink {sink} up")
            errors_before = watch.samples[-1].errors or 0.0
            freeze()
            frozen_at = time.monotonic()
            try:
                # Acks already on their way may still land in the first seconds.
                time.sleep(5.0)
                held = checkpoint_lsn(state)
                time.sleep(OUTAGE - 5.0)
                assert checkpoint_lsn(state) == held, "checkpoint advanced while a sink was down"
            finally:
                thaw()
            thawed_at = time.monotonic()
            assert agent.alive(), agent.log()[-3000:]
            workload.run_for(3.0)
            committed = workload.stop()
            code = drain_and_stop(agent, dsn, state, timeout=150)
            outage = watch.during(frozen_at, thawed_at + 5)
        assert code == 0, agent.log()[-3000:]
        assert any(s.sink_up == 0 for s in outage), f"sink_up never 0 during the outage: {outage}"
        assert max((s.errors or 0.0) for s in watch.samples) > errors_before, "no sink error counted"
    finally:
        thaw()
        if agent.alive():
            agent.kill()
        workload._stop.set()
    archive = read_events(config, keys, env=env)
    assert_exactly(committed, change_ops(archive), "archive")
    assert fold_items(archive) == table_state(dsn)
    if sink == "kafka":
        assert_exactly(committed, change_ops(read_events(config, keys, "--from-kafka")), "kafka")


def test_broker_frozen_30s_loses_nothing_and_holds_checkpoint(
    pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    create_schema(pg_database.dsn)
    keys = make_keys(tmp_path / "keys")

    def configure(port: int) -> Path:
        return write_config(
            tmp_path / "cv.yaml",
            source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_broker", "publication": "cv_broker"},
            archive_url=(tmp_path / "archive").as_uri(),
            keys=keys,
            state_dir=tmp_path / "state",
            kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
                   "replication_factor": 1, "min_insync_replicas": 1},
            extra={"metrics_listen": f"127.0.0.1:{port}"},
        )

    _run_outage(tmp_path, pg_database.dsn, configure, keys, "kafka",
                kafka_broker.pause, kafka_broker.resume)


@pytest.fixture
def private_s3(server_log_dir: Path) -> Iterator[MotoS3]:
    server = MotoS3(log_dir=server_log_dir, name="moto-faults")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_s3_frozen_30s_loses_nothing_and_holds_checkpoint(
    pg_database: Any, private_s3: MotoS3, tmp_path: Path
) -> None:
    create_schema(pg_database.dsn)
    bucket = private_s3.create_bucket("cv-faults")
    keys = make_keys(tmp_path / "keys")

    def configure(port: int) -> Path:
        config = write_config(
            tmp_path / "cv.yaml",
            source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_s3", "publication": "cv_s3"},
            archive_url=f"s3://{bucket}/archive",
            keys=keys,
            state_dir=tmp_path / "state",
            extra={"metrics_listen": f"127.0.0.1:{port}"},
        )
        doc = yaml.safe_load(config.read_text())
        doc["archive"]["s3_endpoint_url"] = private_s3.endpoint_url
        config.write_text(yaml.safe_dump(doc))
        return config

    _run_outage(tmp_path, pg_database.dsn, configure, keys, "archive",
                private_s3.pause, private_s3.resume, env=private_s3.env())
