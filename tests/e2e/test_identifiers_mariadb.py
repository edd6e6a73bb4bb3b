"""Hostile identifiers on MariaDB: backticks, quotes, spaces, dots, unicode and reserved words.

Captured end to end through the real agent (archive and Kafka), named exactly in
the events, valid topic names, `check` passes. (MariaDB identifiers allow the
Unicode BMP only, so no emoji here.) A restore into a new database with a
hostile name reproduces the tables.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from agent.settings import KafkaSettings, format_table_name
from connectors.kafka.admin import TopicAdmin
from connectors.kafka.topic_names import table_topic
from connectors.mysql.connection import quote_identifier as q
from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config

# (table, key column, other columns)
TABLES: list[tuple[str, str, list[str]]] = [
    ('order"s', "select", ["group", "a.b", "it's", "back`tick", "Mixed Case"]),
    ("Kunden Übersicht", "id", ["Straße", "naïve column", "from"]),
    ("a.b", "key", ["x\"y", "`", "where"]),
    ("select", "group", ["ümlaut", "order"]),
    ("back`tick", "Ключ", ["日本語", "j son"]),
]
JSON_TABLE, JSON_COLUMN = "back`tick", "j son"


def value(table: str, column: str, n: int) -> Any:
    if column == JSON_COLUMN:  # a JSON column (its name has a space) is decoded as JSON
        return {"n": n, "s": "'\"`ü€"}
    return f"{table}|{column}|'\"`; DROP TABLE x;-- ü€ {n}"


def checkpoint(state: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_hostile_identifiers_round_trip(mariadb_server: Any, mysql_database: Any, kafka_broker: Any,
                                        kafka_topic_prefix: str, tmp_path: Path) -> None:
    db = mysql_database.name
    conn = mariadb_server.connect(db)
    try:
        with conn.cursor() as cur:
            for table, key, cols in TABLES:
                cur.execute(
                    f"CREATE TABLE {q(table)} ({q(key)} INT PRIMARY KEY, "
                    + ", ".join(f"{q(c)} {'JSON' if c == JSON_COLUMN else 'VARCHAR(200)'}" for c in cols)
                    + ") CHARACTER SET utf8mb4"
                )
                insert_row(cur, table, key, cols, 1)
    finally:
        conn.close()
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    configured = [format_table_name(db, t) for t, _k, _c in TABLES]
    configured[1] = format_table_name(None, TABLES[1][0])  # without a database: the DSN's
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "mysql", "dsn": mysql_database.dsn, "server_id": 7311, "tables": configured},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
        kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
               "replication_factor": 1, "min_insync_replicas": 1},
    )
    check = cli(["check", "-c", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr

    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint(state) is not None, 90, "initial snapshot")
        conn = mariadb_server.connect(db)
        try:
            with conn.cursor() as cur:
                for table, key, cols in TABLES:
                    insert_row(cur, table, key, cols, 2)
                    insert_row(cur, table, key, cols, 3)
                    cur.execute(f"UPDATE {q(table)} SET {q(cols[0])} = %s WHERE {q(key)} = 2", ("upd 'ü' \"€\"",))
                    cur.execute(f"DELETE FROM {q(table)} WHERE {q(key)} = 3")
                # DDL on hostile names is tracked: a new column, and a truncate.
                cur.execute(f"ALTER TABLE {q(TABLES[0][0])} ADD COLUMN {q('new `col')} INT")
                cur.execute(f"INSERT INTO {q(TABLES[0][0])} ({q(TABLES[0][1])}, {q('new `col')}) VALUES (9, 7)")
                cur.execute(f"TRUNCATE TABLE {q(JSON_TABLE)}")
                cur.execute("SELECT @@gtid_binlog_pos")
                end_gtid = cur.fetchone()[0]
        finally:
            conn.close()

        def caught_up() -> bool:
            cp = checkpoint(state)
            return cp is not None and any(
                k == "gtid" and end_gtid.split("-")[-1] == v.split("-")[-1] for k, v in cp["position"]["extra"]
            )

        wait_for(caught_up, 90, "checkpoint past the workload")
    finally:
        assert agent.stop() == 0, agent.log()

    def of(history: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
        return [e for e in history if e["source"]["table"] == table]

    history = events(config, keys)
    assert {e["source"]["table"] for e in history} == {t for t, _k, _c in TABLES}
    assert {e["source"]["database"] for e in history} == {db}
    for table, key, cols in TABLES:
        mine = of(history, table)
        assert [(e["op"], e["key"]) for e in mine[:5]] == [
            ("r", {key: 1}), ("c", {key: 2}), ("c", {key: 3}), ("u", {key: 2}), ("d", {key: 3}),
        ], table
        assert mine[0]["after"] == {key: 1, **{c: value(table, c, 1) for c in cols}}
        assert mine[1]["after"] == {key: 2, **{c: value(table, c, 2) for c in cols}}
        assert mine[3]["before"][cols[0]] == value(table, cols[0], 2)
        assert mine[3]["after"][cols[0]] == "upd 'ü' \"€\""
    added = of(history, TABLES[0][0])[5:]
    assert [(e["op"], e["after"]) for e in added] == [
        ("c", {TABLES[0][1]: 9, **dict.fromkeys(TABLES[0][2]), "new `col": 7}),
    ]
    assert [e["op"] for e in of(history, JSON_TABLE)][5:] == ["t"]

    from_kafka = events(config, keys, "--from-kafka")
    for table, key, _cols in TABLES:
        assert [(e["op"], e["key"]) for e in of(from_kafka, table)][:4] == [
            ("c", {key: 2}), ("c", {key: 3}), ("u", {key: 2}), ("d", {key: 3}),
        ], table
    ks = KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], topic_prefix=kafka_topic_prefix,
                       replication_factor=1, min_insync_replicas=1)
    admin = TopicAdmin(ks)
    try:
        topics = {t for t in admin.list_topics() if t.startswith(kafka_topic_prefix + ".")}
    finally:
        admin.close()
    expected = {table_topic(kafka_topic_prefix, db, None, t) for t, _k, _c in TABLES}
    assert expected <= topics, (expected, topics)
    for topic in topics:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic), topic
    assert cli(["verify", "-c", str(config)]).returncode == 0

    # Restore every table into a new database whose name needs quoting; compare exactly.
    target = f"r{uuid.uuid4().hex[:6]} Wieder hergestellt ü"
    try:
        restored = cli(["restore", "-c", str(config), "--to", "2999-01-01T00:00:00",
                        "--target-dsn", mysql_database.dsn, "--target-schema", target,
                        "--private-key", str(keys["archive.key"])])
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "MISMATCH" not in restored.stdout, restored.stdout
        for table, key, _cols in TABLES:
            def rows(database: str, table: str = table, key: str = key) -> list[tuple[Any, ...]]:
                return mariadb_server.execute(f"SELECT * FROM {q(database)}.{q(table)} ORDER BY {q(key)}")
            assert rows(target) == rows(db), table
    finally:
        mariadb_server.execute(f"DROP DATABASE IF EXISTS {q(target)}")


def insert_row(cur: Any, table: str, key: str, cols: list[str], n: int) -> None:
    names = ", ".join(q(c) for c in [key, *cols])
    marks = ", ".join(["%s"] * (len(cols) + 1))
    cur.execute(f"INSERT INTO {q(table)} ({names}) VALUES ({marks})", (n, *(json.dumps(v) if isinstance(v := value(table, c, n), dict) else v for c in cols)))
