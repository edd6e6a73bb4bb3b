"""Entity restore across a primary key redefined after the snapshot.

The fold re-keys a table whose key was redefined (docs/restore.md, "How it
works" step 3). An entity restore folds only candidate keys
(`Fold.only_keys`), computed with the snapshot's key columns: after the
re-key the same rows carry keys of the new shape, and their later changes
must still be folded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.test_restore_postgres import checkpoint_lsn, wait_durable


def _rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return sorted(conn.execute(query).fetchall())


def test_entity_restore_folds_changes_after_a_key_redefinition(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        conn.execute(
            "CREATE TABLE orders (id int NOT NULL, customer_id int NOT NULL REFERENCES customers(id),"
            " note text, CONSTRAINT orders_pkey PRIMARY KEY (id))"
        )
        conn.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 3) g")
        conn.execute("INSERT INTO orders VALUES (10, 2, 'a'), (11, 2, 'b'), (12, 3, 'c')")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_rev_rekey", "publication": "cv_rev_rekey",
                "tables": ["public.customers", "public.orders"]},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE orders DROP CONSTRAINT orders_pkey")
            conn.execute("ALTER TABLE orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id, customer_id)")
            conn.execute("UPDATE orders SET note = 'changed' WHERE id = 10")
            conn.execute("DELETE FROM orders WHERE id = 11")
        wait_durable(dsn, state)
        time.sleep(1.2)
    finally:
        assert agent.stop() == 0, agent.log()

    def restore(schema: str, *extra: str) -> str:
        proc = cli(["restore", "-c", str(config), "--to", "2999-01-01T00:00:00", "--target-dsn", dsn,
                    "--target-schema", schema, "--private-key", str(keys["archive.key"]), *extra])
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc.stdout

    truth = _rows(dsn, "SELECT id, customer_id, note FROM public.orders WHERE customer_id = 2")
    assert truth == [(10, 2, "changed")]
    restore("r_whole")
    assert _rows(dsn, "SELECT id, customer_id, note FROM r_whole.orders WHERE customer_id = 2") == truth
    out = restore("r_two", "--entity", "public.customers.id=2")
    assert _rows(dsn, "SELECT id, customer_id, note FROM r_two.orders") == truth, out
