"""An S3 endpoint that answers errors for some requests (not down): every few
PUTs and GETs fail — some after the object was stored — and for a while every
PUT does. The agent captures into an s3:// archive meanwhile: nothing lost,
the retries and the failed sink visible, and the archive verifies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.agent_process import cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    FaultyS3Proxy,
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

BURST = 12.0  # longer than the S3 client's whole retry budget for one call


@pytest.fixture
def private_s3(server_log_dir: Path) -> Iterator[MotoS3]:
    server = MotoS3(log_dir=server_log_dir, name="moto-errors")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(240)
def test_s3_answering_errors_loses_nothing(pg_database: Any, private_s3: MotoS3, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    create_schema(dsn)
    bucket = private_s3.create_bucket("cv-errors")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    env = private_s3.env()
    with FaultyS3Proxy(private_s3.endpoint_url) as proxy:

        def configure(port: int) -> Path:
            config = write_config(
                tmp_path / "cv.yaml",
                source={"type": "postgres", "dsn": dsn, "slot": "cv_s3err", "publication": "cv_s3err"},
                archive_url=f"s3://{bucket}/archive", keys=keys, state_dir=state,
                extra={"metrics_listen": f"127.0.0.1:{port}"},
            )
            doc = yaml.safe_load(config.read_text())
            doc["archive"]["s3_endpoint_url"] = proxy.endpoint_url
            config.write_text(yaml.safe_dump(doc))
            return config

        agent, port = start_with_metrics(configure, tmp_path / "agent.log", env=env)
        config = tmp_path / "cv.yaml"
        workload = Workload(dsn, pause=0.05)
        try:
            wait_for(lambda: checkpoint_lsn(state) is not None, 90, "initial snapshot")
            workload.start()
            workload.run_for(6.0)
            proxy.burst.set()
            try:
                workload.run_for(BURST)
            finally:
                proxy.burst.clear()
            workload.run_for(4.0)
            assert agent.alive(), agent.log()[-3000:]
            errors = sink_errors(port)
            committed = workload.stop()
            code = drain_and_stop(agent, dsn, state, timeout=150)
        finally:
            workload._stop.set()
            if agent.alive():
                agent.kill()
        log = agent.log()
        assert code == 0, log[-3000:]
        assert proxy.failed["before"] > 0 and proxy.failed["after"] > 0, proxy.failed
        # Retries are logged, never silent; the burst failed the sink (counted).
        assert "retrying in" in log and "SlowDown (HTTP 503)" in log, log[-3000:]
        assert "InternalError (HTTP 500)" in log
        assert "capture interrupted" in log, log[-3000:]
        assert "Traceback" not in log
        assert errors > 0, "changevault_sink_errors_total{sink=archive} did not count the burst"
        before = dict(proxy.failed)
        # Readers go through the same faulty endpoint.
        archive = read_events(config, keys, env=env)
        verify = cli(["verify", "-c", str(config), "--decrypt", "--private-key", str(keys["archive.key"])],
                     env=env)
        assert proxy.failed["before"] > before["before"], "the readers met no injected error"
    assert verify.returncode == 0, verify.stderr
    assert_exactly(committed, change_ops(archive), "archive")
    assert fold_items(archive) == table_state(dsn)
    assert len(committed) > 50


def sink_errors(port: int) -> float:
    return metric(scrape(port), "changevault_sink_errors_total", 'sink="archive"') or 0.0

