"""Hostile identifiers on PostgreSQL: quotes, spaces, dots, unicode, emoji and reserved words.

Captured end to end through the real agent (archive and Kafka), named exactly in
the events, valid topic names, `check` passes, and a restore into a new schema
with a hostile name reproduces the source tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from agent.settings import KafkaSettings, format_table_name
from connectors.kafka.admin import TopicAdmin
from connectors.kafka.topic_names import table_topic
from tests.e2e.agent_process import AgentProcess, cli, events, make_keys, wait_for, write_config

SCHEMA = "Kunden Übersicht"
# (schema, table, key column, other columns); every name needs quoting in SQL.
TABLES: list[tuple[str, str, str, list[str]]] = [
    (SCHEMA, 'order"s', "select", ["group", "a.b", "it's", "back`tick", "Mixed Case", "🙂"]),
    ("public", "select", "group", ["from", "user", "  padded  "]),
    ("public", "a.b", "id", ['x"y', "Straße", "naïve column"]),
    ("public", "🧾 emoji", "🔑", ["ümlaut", "tab\there"]),
]
TARGET_SCHEMA = 'Wieder "hergestellt".v1'


def checkpoint_lsn(state: Path) -> int | None:
    try:
        text = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def wait_durable(dsn: str, state: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        hi, lo = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0].split("/")
    end = (int(hi, 16) << 32) + int(lo, 16)
    wait_for(lambda: (cp := checkpoint_lsn(state)) is not None and cp >= end, 90, "checkpoint")


def rows_of(conn: psycopg.Connection[Any], schema: str, table: str, key: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(schema, table), sql.Identifier(key))
    ).fetchall()


def value(table: str, column: str, n: int) -> str:
    """A value that carries quotes and unicode too, distinct per row."""
    return f"{table}|{column}|'\"`; DROP TABLE x;-- ü🙂 {n}"


def test_hostile_identifiers_round_trip(pg_database: Any, kafka_broker: Any, kafka_topic_prefix: str,
                                        tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        for schema, table, key, cols in TABLES:
            conn.execute(
                sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {})").format(
                    sql.Identifier(schema, table), sql.Identifier(key),
                    sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in cols),
                )
            )
            insert_row(conn, schema, table, key, cols, 1)
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    # The config names tables in the documented syntax (format_table_name is its inverse).
    configured = [format_table_name(s, t) for s, t, _k, _c in TABLES]
    assert configured[0] == 'Kunden Übersicht."order""s"'
    configured[0] = '"Kunden Übersicht"."order""s"'  # quoting a part that needs none is fine too
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_ident", "publication": "cv_ident",
                "tables": configured},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
        kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": kafka_topic_prefix,
               "replication_factor": 1, "min_insync_replicas": 1},
    )
    check = cli(["check", "-c", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr
    for schema, table, _k, _c in TABLES:
        assert f"{schema}.{table}" in check.stdout, check.stdout

    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 90, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema, table, key, cols in TABLES:
                insert_row(conn, schema, table, key, cols, 2)
                insert_row(conn, schema, table, key, cols, 3)
                conn.execute(
                    sql.SQL("UPDATE {} SET {} = %s WHERE {} = 2").format(
                        sql.Identifier(schema, table), sql.Identifier(cols[0]), sql.Identifier(key)
                    ),
                    ("upd 'ü' \"🙂\"",),
                )
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE {} = 3").format(
                        sql.Identifier(schema, table), sql.Identifier(key)
                    )
                )
        wait_durable(dsn, state)
        # The publication SQL quoted every name: it publishes exactly our tables.
        with psycopg.connect(dsn, autocommit=True) as conn:
            published = set(conn.execute(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = 'cv_ident'"
            ).fetchall())
        assert published == {(s, t) for s, t, _k, _c in TABLES}
    finally:
        assert agent.stop() == 0, agent.log()

    history = events(config, keys)
    for schema, table, key, cols in TABLES:
        mine = [e for e in history if (e["source"]["schema"], e["source"]["table"]) == (schema, table)]
        assert [(e["op"], e["key"]) for e in mine] == [
            ("r", {key: 1}), ("c", {key: 2}), ("c", {key: 3}), ("u", {key: 2}), ("d", {key: 3}),
        ], (schema, table)
        assert mine[1]["after"] == {key: 2, **{c: value(table, c, 2) for c in cols}}
        assert mine[3]["after"][cols[0]] == "upd 'ü' \"🙂\""

    from_kafka = events(config, keys, "--from-kafka")
    for schema, table, key, _cols in TABLES:
        mine = [e for e in from_kafka if (e["source"]["schema"], e["source"]["table"]) == (schema, table)]
        assert [(e["op"], e["key"]) for e in mine] == [
            ("c", {key: 2}), ("c", {key: 3}), ("u", {key: 2}), ("d", {key: 3}),
        ], (schema, table)
    ks = KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], topic_prefix=kafka_topic_prefix,
                       replication_factor=1, min_insync_replicas=1)
    admin = TopicAdmin(ks)
    try:
        topics = {t for t in admin.list_topics() if t.startswith(kafka_topic_prefix + ".")}
    finally:
        admin.close()
    db = pg_database.name
    expected = {table_topic(kafka_topic_prefix, db, s, t) for s, t, _k, _c in TABLES}
    assert expected <= topics, (expected, topics)
    for topic in topics:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic), topic
    assert cli(["verify", "-c", str(config)]).returncode == 0

    # Restore every table into a schema whose own name needs quoting; compare exactly.
    restored = cli(["restore", "-c", str(config), "--to", "2999-01-01T00:00:00",
                    "--target-dsn", dsn, "--target-schema", TARGET_SCHEMA,
                    "--private-key", str(keys["archive.key"])])
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "MISMATCH" not in restored.stdout, restored.stdout
    with psycopg.connect(dsn) as conn:
        for schema, table, key, _cols in TABLES:
            assert rows_of(conn, TARGET_SCHEMA, table, key) == rows_of(conn, schema, table, key), table


def insert_row(conn: psycopg.Connection[Any], schema: str, table: str, key: str, cols: list[str], n: int) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(schema, table),
            sql.SQL(", ").join(sql.Identifier(c) for c in [key, *cols]),
            sql.SQL(", ").join(sql.Placeholder() for _ in range(len(cols) + 1)),
        ),
        (n, *(value(table, c, n) for c in cols)),
    )
