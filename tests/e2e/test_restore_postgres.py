"""Point-in-time restore through the real CLI: capture, damage, restore, compare exactly."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config

TABLES = ("customers", "accounts")
SESSION = "SET TimeZone = 'UTC'"


def checkpoint_lsn(state: Path) -> int | None:
    try:
        text = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return lsn_int(text)


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def table_text(dsn: str, schema: str, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and every row as text, ordered by the primary key (id)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(SESSION)
        names = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum",
                (sql.Identifier(schema, table).as_string(conn),),
            ).fetchall()
        ]
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY id").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names),
                sql.Identifier(schema, table),
            )
        ).fetchall()
    return names, rows


def truth(dsn: str) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    return {t: table_text(dsn, "public", t) for t in TABLES}


def schema_exists(dsn: str, schema: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def wait_durable(dsn: str, state: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        end = lsn_int(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    wait_for(lambda: (cp := checkpoint_lsn(state)) is not None and cp >= end, 60, "checkpoint")


def restore(config: Path, keys: dict[str, Path], dsn: str, schema: str, *target: str, key: Path | None = None) -> Any:
    return cli(["restore", "-c", str(config), *target, "--target-dsn", dsn, "--target-schema", schema,
                "--private-key", str(key or keys["archive.key"])])


def test_restore_to_time_before_tx_and_position_exactly(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, balance numeric(12,2)"
            " DEFAULT 0, tags text[], data jsonb, photo bytea, seen timestamptz, born date,"
            " score float8, big text)"
        )
        conn.execute("CREATE INDEX customers_name_idx ON customers (name)")
        conn.execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, customer_id int REFERENCES customers(id),"
            " points int NOT NULL)"
        )
        conn.execute(
            "INSERT INTO customers (name, balance, tags, data, photo, seen, born, score, big) VALUES"
            " ('ann', 10.50, '{a,\"b c\"}', '{\"k\": [1, 2]}', '\\x00ff', '2024-01-01 10:00:00.123456+00',"
            "  '0044-03-15 BC', 'NaN', repeat('x', 5000)),"
            " ('bob', 20, NULL, '[]', NULL, NULL, '2000-02-29', 1.5, NULL)"
        )
        conn.execute("INSERT INTO accounts VALUES (1, 1, 100), (2, 2, 50)")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_restore", "publication": "cv_restore"},
        archive_url=archive.as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO customers (name, balance, score) VALUES ('cy', 7.25, '-Infinity')")
            conn.execute("INSERT INTO accounts VALUES (3, 3, 70)")
            with conn.transaction():
                conn.execute("UPDATE customers SET name = 'ann2' WHERE id = 1")  # TOAST 'big' unchanged
                conn.execute("UPDATE accounts SET points = points + 1")
            conn.execute("UPDATE accounts SET id = 20 WHERE id = 2")  # key change
            conn.execute("DELETE FROM accounts WHERE id = 1")
            conn.execute("INSERT INTO accounts VALUES (1, 1, 5)")
        wait_durable(dsn, state)
        t_truth = truth(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SESSION)
            t_time = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]
            t_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        time.sleep(0.05)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE customers ADD COLUMN tier text")  # see docs/restore.md: added defaults
            conn.execute("UPDATE customers SET tier = 'silver', balance = balance + 1 WHERE id = 2")
        wait_durable(dsn, state)
        before_bad = truth(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.transaction():
                bad_tx = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
                conn.execute("UPDATE customers SET balance = 0")  # the "bad update"
            conn.execute("DELETE FROM accounts WHERE id = 3")
            conn.execute("INSERT INTO customers (name) VALUES ('late')")
        wait_durable(dsn, state)
        # While the agent runs (and holds the lease), restore still works; the
        # audit record is then kept as a signed object only.
        proc = restore(config, keys, dsn, "r_time", "--to", t_time)
        assert proc.returncode == 0, proc.stderr
        assert "audit: audit/" in proc.stdout and "agent running" in proc.stdout
    finally:
        assert agent.stop() == 0, agent.log()

    # --to TIME: exactly the tables at T, with T's columns (no `tier`).
    assert "checksum" in proc.stdout and "MISMATCH" not in proc.stdout, proc.stdout
    for t in TABLES:
        got = table_text(dsn, "r_time", t)
        assert got[0] == t_truth[t][0]
        for a, b in zip(got[1], t_truth[t][1], strict=True):
            assert [x[:40] if x else x for x in a] == [x[:40] if x else x for x in b], t
    # Its own sequence, past the restored maximum; the source's is untouched.
    with psycopg.connect(dsn, autocommit=True) as conn:
        src_seq = conn.execute("SELECT last_value FROM customers_id_seq").fetchone()[0]
        new_id = conn.execute("INSERT INTO r_time.customers (name) VALUES ('new') RETURNING id").fetchone()[0]
        assert new_id == 4
        assert conn.execute("SELECT last_value FROM customers_id_seq").fetchone()[0] == src_seq
        fks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'r_time'::regnamespace"
        ).fetchone()[0]
        assert fks == 1

    # --before-tx of the bad update: the state just before it (with `tier` now).
    proc = restore(config, keys, dsn, "r_before", "--before-tx", bad_tx)
    assert proc.returncode == 0, proc.stderr
    for t in TABLES:
        assert table_text(dsn, "r_before", t) == before_bad[t], t

    # --to-position: the LSN at T gives the same prefix as the time.
    proc = restore(config, keys, dsn, "r_pos", "--to-position", t_lsn)
    assert proc.returncode == 0, proc.stderr
    for t in TABLES:
        assert table_text(dsn, "r_pos", t) == t_truth[t], t

    # The agent is stopped: the audit entry joins the signed chain, verify agrees.
    assert "catalog entry" in proc.stdout, proc.stdout
    assert cli(["verify", "-c", str(config)]).returncode == 0

    # A time before the oldest snapshot is refused with exit 2.
    proc = restore(config, keys, dsn, "r_early", "--to", "2001-01-01T00:00:00")
    assert proc.returncode == 2, proc.stderr
    assert "oldest" in proc.stderr
    # A non-empty target table is refused with exit 2, nothing changed.
    proc = restore(config, keys, dsn, "r_time", "--to", t_time)
    assert proc.returncode == 2, proc.stderr

    # Wrong key: exit 4, nothing written.
    other = make_keys(tmp_path / "other")
    proc = restore(config, keys, dsn, "r_wrong", "--to", t_time, key=other["archive.key"])
    assert proc.returncode == 4, proc.stderr
    assert not schema_exists(dsn, "r_wrong")

    # Tamper with one segment byte: exit 4, nothing written.
    tampered = tmp_path / "tampered"
    shutil.copytree(archive, tampered)
    seg = sorted(tampered.rglob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    config2 = write_config(
        tmp_path / "cv2.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_restore", "publication": "cv_restore"},
        archive_url=tampered.as_uri(), keys=keys, state_dir=tmp_path / "state2",
    )
    proc = restore(config2, keys, dsn, "r_tamper", "--to-position", "FFFFFFFF/0")
    assert proc.returncode == 4, proc.stderr
    assert not schema_exists(dsn, "r_tamper")
