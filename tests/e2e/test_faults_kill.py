"""kill -9 of the agent at random moments during a steady load, and SIGTERM in the
middle of a large transaction: nothing committed is lost, nothing is doubled
after dedupe by id, and no data-key/nonce pair is ever used twice."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    Workload,
    assert_exactly,
    assert_no_nonce_reuse,
    change_ops,
    checkpoint_lsn,
    create_schema,
    drain_and_stop,
    fold_items,
    kafka_settings,
    lsn_int,
    raw_kafka_values,
    read_events,
    segment_stream_ids,
    table_state,
)


def _config(tmp_path: Path, pg_database: Any, kafka_broker: Any, prefix: str,
            keys: dict[str, Path]) -> Path:
    return write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_kill", "publication": "cv_kill"},
        archive_url=(tmp_path / "archive").as_uri(),
        keys=keys,
        state_dir=tmp_path / "state",
        kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": prefix,
               "replication_factor": 1, "min_insync_replicas": 1},
    )


def test_kill_9_three_times_during_load_loses_nothing(
    pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    create_schema(pg_database.dsn)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = _config(tmp_path, pg_database, kafka_broker, kafka_topic_prefix, keys)
    log = tmp_path / "agent.log"
    rng = random.Random()
    agent = AgentProcess(config, log)
    workload = Workload(pg_database.dsn)
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        workload.start()
        for _ in range(3):
            # Each process must have sealed something before it dies, so that
            # every process's data key shows up in Kafka.
            before = checkpoint_lsn(state) or 0
            wait_for(lambda b=before: (checkpoint_lsn(state) or 0) > b, 60,
                     "the agent delivering")
            time.sleep(rng.uniform(0.0, 1.5))
            assert agent.alive(), agent.log()
            agent.kill()
            agent = AgentProcess(config, log)
        workload.run_for(2.0)
        committed = workload.stop()
        code = drain_and_stop(agent, pg_database.dsn, state)
    finally:
        if agent.alive():
            agent.kill()
        workload._stop.set()
    assert code == 0, agent.log()[-3000:]
    assert len(committed) > 20

    archive = read_events(config, keys)
    assert_exactly(committed, change_ops(archive), "archive")
    assert fold_items(archive) == table_state(pg_database.dsn)
    kafka = read_events(config, keys, "--from-kafka")
    assert_exactly(committed, change_ops(kafka), "kafka")

    values = [v for _t, _k, v in raw_kafka_values(kafka_settings(kafka_broker.bootstrap, kafka_topic_prefix))]
    report = assert_no_nonce_reuse(values)
    # A fresh data key per process start (four processes), one agent identity.
    assert len(report.data_keys) >= 4, report
    assert len(report.agents) == 1
    streams = segment_stream_ids(tmp_path / "archive")
    assert len(streams) == len(set(streams)), "two archive objects share a data key and salt"


def test_sigterm_during_a_large_transaction_drains_and_resumes(
    pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str, tmp_path: Path
) -> None:
    create_schema(pg_database.dsn)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = _config(tmp_path, pg_database, kafka_broker, kafka_topic_prefix, keys)
    agent = AgentProcess(config, tmp_path / "agent.log")
    rows = 20_000
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as long_tx, \
                psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            # A transaction still open in the database while the agent stops.
            long_tx.execute("BEGIN")
            long_tx.execute("INSERT INTO ledger VALUES (-1, 0)")
            conn.execute("INSERT INTO items SELECT g, g, repeat('x', 100) FROM generate_series(1, %s) g",
                         (rows,))
            big_end = lsn_int(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
            # Mid-delivery: the agent has started on the big transaction
            # (its topic exists) but not made it durable.
            time.sleep(1.5)
            cp = checkpoint_lsn(state)
            assert cp is not None and cp < big_end, "the large transaction was delivered too fast to interrupt"
            started = time.monotonic()
            code = agent.stop(timeout=90)
            assert code == 0, agent.log()[-3000:]
            assert time.monotonic() - started < 80
            assert checkpoint_lsn(state) is not None
            long_tx.execute("COMMIT")
        agent = AgentProcess(config, tmp_path / "agent2.log")
        code = drain_and_stop(agent, pg_database.dsn, state)
    finally:
        if agent.alive():
            agent.kill()
    assert code == 0, agent.log()[-3000:]
    expected = [[("items", "c", i) for i in range(1, rows + 1)], [("ledger", "c", -1)]]
    archive = read_events(config, keys)
    assert_exactly(expected, change_ops(archive), "archive")
    kafka = read_events(config, keys, "--from-kafka")
    assert_exactly(expected, change_ops(kafka), "kafka")
