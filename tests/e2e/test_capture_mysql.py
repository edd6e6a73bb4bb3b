"""MariaDB -> sealed -> Kafka + archive through the real CLI, read back in commit order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config


def checkpoint(state: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_mariadb_round_trip(mariadb_server: Any, mysql_database: Any, kafka_broker: Any,
                            kafka_topic_prefix: str, tmp_path: Path) -> None:
    db = mysql_database.name
    mariadb_server.execute("CREATE TABLE customers (id BIGINT PRIMARY KEY, name VARCHAR(40), points INT)", db=db)
    mariadb_server.execute("INSERT INTO customers VALUES (1, 'ann', 100), (2, 'bob', 50)", db=db)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "mysql", "dsn": mysql_database.dsn, "server_id": 7001},
        archive_url=(tmp_path / "archive").as_uri(),
        keys=keys,
        state_dir=state,
        kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
               "replication_factor": 1, "min_insync_replicas": 1},
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint(state) is not None, 60, "initial snapshot")
        conn = mariadb_server.connect(db)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO customers VALUES (3, 'cy', 10)")
            conn.commit()
            cur.execute("UPDATE customers SET points = points - 10 WHERE id = 1")
            cur.execute("DELETE FROM customers WHERE id = 2")
            conn.commit()
            cur.execute("SELECT @@gtid_binlog_pos")
            end_gtid = cur.fetchone()[0]
        conn.close()

        def caught_up() -> bool:
            cp = checkpoint(state)
            return cp is not None and any(
                k == "gtid" and end_gtid.split("-")[-1] == v.split("-")[-1]
                for k, v in cp["position"]["extra"]
            )

        wait_for(caught_up, 60, "checkpoint past the workload")
    finally:
        code = agent.stop()
    assert code == 0, agent.log()

    history = events(config, keys)
    snapshot = [e for e in history if e["op"] == "r"]
    changes = [e for e in history if e["op"] != "r"]
    assert sorted(e["after"]["id"] for e in snapshot) == [1, 2]
    assert [(e["op"], e["key"]) for e in changes] == [
        ("c", {"id": 3}), ("u", {"id": 1}), ("d", {"id": 2}),
    ]
    assert changes[1]["before"]["points"] == 100 and changes[1]["after"]["points"] == 90
    assert changes[0]["source"]["connector"] == "mysql"
    from_kafka = events(config, keys, "--from-kafka")
    assert [(e["op"], e["key"]) for e in from_kafka] == [("c", {"id": 3}), ("u", {"id": 1}), ("d", {"id": 2})]
    verify = cli(["verify", "-c", str(config)])
    assert verify.returncode == 0, verify.stderr
