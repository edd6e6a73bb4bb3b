"""Entity restore after a primary-key-changing update (PostgreSQL DEFAULT identity).

An update that changes a row's key is indexed under its new key only (the
sink hashes `ev.key`, the after image's key); under DEFAULT identity the
before image holds just the old key, so its link columns are not indexed
either. An entity restore that selects segments by index must still see such
an update of a candidate row, or the old key survives in the fold and is
restored although it no longer exists at the target.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.test_restore_postgres import checkpoint_lsn, wait_durable


def _ids(dsn: str, query: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return sorted(int(r[0]) for r in conn.execute(query).fetchall())


def _traffic(dsn: str, state: Path) -> None:
    """Unrelated changes in segments of their own (segment_max_age is 1 s)."""
    for _ in range(2):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO page_views (url) SELECT 'u' || g FROM generate_series(1, 200) g")
        wait_durable(dsn, state)
        time.sleep(1.2)


def test_entity_restore_sees_key_changing_updates(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers(id), note text)"
        )
        conn.execute("CREATE TABLE page_views (id serial PRIMARY KEY, url text)")
        conn.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 5) g")
        conn.execute("INSERT INTO orders VALUES (10, 2, 'a'), (11, 2, 'b'), (12, 4, 'c')")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_rev_key", "publication": "cv_rev_key",
                "tables": ["public.customers", "public.orders", "public.page_views"]},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        _traffic(dsn, state)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The root row's key changes: customer 3 no longer exists.
            conn.execute("UPDATE customers SET id = 300 WHERE id = 3")
            # An order of customer 2 gets a new key and another customer in one update.
            conn.execute("UPDATE orders SET id = 1000, customer_id = 4 WHERE id = 10")
        wait_durable(dsn, state)
        time.sleep(1.2)
        _traffic(dsn, state)
    finally:
        assert agent.stop() == 0, agent.log()

    def restore(schema: str, *extra: str) -> str:
        proc = cli(["restore", "-c", str(config), "--to", "2999-01-01T00:00:00", "--target-dsn", dsn,
                    "--target-schema", schema, "--private-key", str(keys["archive.key"]), *extra])
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc.stdout

    # The whole restore agrees with the database.
    restore("r_whole")
    assert _ids(dsn, "SELECT id FROM r_whole.customers") == [1, 2, 4, 5, 300]
    assert _ids(dsn, "SELECT id FROM r_whole.orders") == [11, 12, 1000]

    # Customer 3 does not exist at the target: nothing to restore. Customer 2's
    # orders at the target: only 11 (order 10 became 1000 of customer 4).
    restore("r_three", "--entity", "public.customers.id=3")
    restore("r_two", "--entity", "public.customers.id=2")
    got = {
        "customer 3": _ids(dsn, "SELECT id FROM r_three.customers"),
        "customer 2": _ids(dsn, "SELECT id FROM r_two.customers"),
        "orders of 2": _ids(dsn, "SELECT id FROM r_two.orders"),
    }
    assert got == {"customer 3": [], "customer 2": [2], "orders of 2": [11]}
