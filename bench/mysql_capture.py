"""MariaDB end to end: the real agent (binlog -> sealed -> Kafka + archive, durable)
beside stock mysql-replication and mariadb-binlog reading the same binlog.

The agent is started and caught up first (its empty snapshot and first
checkpoint), like the PostgreSQL capture figure; then the workload
(bench/mysql_decode.py `load_rows`: N inserts in 1,000-row statements, then N
updates in 1,000-row statements) is written while it runs, and the time from
the first statement to the checkpoint (every sink durable) carrying the
workload's last GTID is measured: the agent's start is not in the figure. The
load generator alone is faster than the agent (its rate is in the note).
Stock mysql-replication, mariadb-binlog and our source alone then read the
same binlog from its start (decode only, no sinks): `mysql_decode_rows_per_s`
and `mysql_decode_speedup` compare like with like.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import mysql_decode
from bench.agent_runs import dir_bytes
from bench.servers import BenchServers
from tests.e2e.agent_process import AgentProcess, make_keys, write_config
from tests.servers.mariadb import MariaDBServer

KEYS = ("mysql_capture_rows_per_s", "mysql_stock_rows_per_s", "mariadb_binlog_rows_per_s",
        "mysql_speedup", "mysql_decode_rows_per_s", "mysql_decode_speedup")


def _checkpoint_gtid_seq(state: Path) -> int | None:
    try:
        doc = json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    for key, value in doc["position"].get("extra", []):
        if key == "gtid" and value:
            return int(str(value).split(",")[0].split("-")[-1])
    return None


def _wait(agent: AgentProcess, state: Path, done: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(_checkpoint_gtid_seq(state)):
            return time.monotonic()
        if not agent.alive():
            raise RuntimeError(f"agent died: {agent.log()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"MariaDB capture: checkpoint not caught up in {timeout:.0f}s")


def measure_mysql_capture(servers: BenchServers, quick: bool,
                          ) -> tuple[dict[str, float | None], dict[str, str]]:
    rows = 20_000 if quick else 150_000  # changes: twice that (insert + update)
    values: dict[str, float | None] = dict.fromkeys(KEYS)
    notes: dict[str, str] = {}
    root = Path(tempfile.mkdtemp(prefix="mysql-capture-", dir=servers.workdir))  # one per run
    with MariaDBServer(log_dir=servers.workdir / "logs", name="mariadb-bench") as server:
        first = server.execute("SHOW BINARY LOGS")[0][0]
        mysql_decode.create_table(server)
        keys = make_keys(root / "keys")
        state = root / "state"
        config = write_config(
            root / "cv.yaml",
            source={"type": "mysql", "dsn": server.dsn(mysql_decode.DB), "server_id": 7301},
            archive_url=(root / "archive").as_uri(), keys=keys, state_dir=state,
            kafka={"bootstrap_servers": [servers.kafka.bootstrap], "topic_prefix": "bench_my",
                   "replication_factor": 1, "min_insync_replicas": 1,
                   "producer": "confluent-kafka"})
        # Start and catch up (the empty snapshot, the first checkpoint), then load.
        agent = AgentProcess(config, root / "agent.log")
        try:
            _wait(agent, state, lambda seq: (state / "checkpoint.json").exists(), 120)
            archive_before = dir_bytes(root / "archive")
            started = time.monotonic()
            mysql_decode.load_rows(server, rows)
            loaded = time.monotonic()
            end_seq = int(str(server.execute("SELECT @@gtid_binlog_pos")[0][0]).split("-")[-1])
            finished = _wait(agent, state, lambda seq: seq is not None and seq >= end_seq, 1800)
        finally:
            code = agent.stop()
        if code != 0:
            raise RuntimeError(f"agent exited {code}: {agent.log()[-2000:]}")
        changes = 2 * rows
        capture = changes / (finished - started)
        stock_rows, stock_s = mysql_decode.stock(server, first)
        peer = mysql_decode.mariadb_binlog(server, first)
        (root / "decode").mkdir()
        decode_rows, decode_s = mysql_decode.ours(server, first, root / "decode")
    values["mysql_capture_rows_per_s"] = capture
    values["mysql_stock_rows_per_s"] = stock_rows / stock_s
    values["mariadb_binlog_rows_per_s"] = peer[0] / peer[1] if peer else None
    values["mysql_speedup"] = capture / (stock_rows / stock_s)
    values["mysql_decode_rows_per_s"] = decode_rows / decode_s
    values["mysql_decode_speedup"] = (decode_rows / decode_s) / (stock_rows / stock_s)
    archive = dir_bytes(root / "archive") - archive_before
    notes["mysql_capture_rows_per_s"] = (
        f"the real agent (confluent-kafka) end to end: {changes:,} row changes ({rows:,} inserts "
        f"then {rows:,} updates, 1,000 rows per statement) written while it ran (caught up "
        f"first; the load alone took {loaded - started:.1f} s, "
        f"{changes / (loaded - started):,.0f} rows/s), timed from the first statement to the "
        f"checkpoint (Kafka acked + archive durable) holding the last GTID; archive "
        f"{archive / changes:.1f} bytes/change")
    notes["mysql_decode_rows_per_s"] = (
        "our source alone (binlog -> typed ChangeEvents, no sinks) reading the same binlog "
        "from its start, like stock mysql-replication and mariadb-binlog")
    notes["mysql_speedup"] = "mysql_capture_rows_per_s / mysql_stock_rows_per_s (same binlog)"
    notes["mysql_decode_speedup"] = "mysql_decode_rows_per_s / mysql_stock_rows_per_s (both decode only)"
    if peer is None:
        notes["mariadb_binlog_rows_per_s"] = "mariadb-binlog is not installed"
    return values, notes
