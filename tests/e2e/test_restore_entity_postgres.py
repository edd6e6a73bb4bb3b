"""Entity restore through the real CLI: preview, cascade refusal, in place, only one customer touched.

Tables use PostgreSQL's DEFAULT replica identity, so the deletes after T carry
only the key: whether a deleted order or ledger row belonged to customer 3
is known only by folding it forward from the snapshot.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.test_restore_postgres import checkpoint_lsn, schema_exists, wait_durable

CAPTURED = ["public.customers", "public.orders", "public.ledger", "public.page_views"]


def physical(dsn: str) -> dict[tuple[str, int], tuple[str, str, str]]:
    """(table, id) -> (xmin, ctid, row text) for every row of the captured tables and notes."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for table in ("customers", "orders", "ledger", "page_views", "notes"):
            for row_id, xmin, ctid, text in conn.execute(
                f"SELECT id, xmin::text, ctid::text, t::text FROM {table} t"
            ).fetchall():
                out[(table, int(row_id))] = (xmin, ctid, text)
    return out


def rows_text(dsn: str) -> dict[tuple[str, int], str]:
    return {k: v[2] for k, v in physical(dsn).items()}


def page_views(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO page_views (url) SELECT 'u' || g FROM generate_series(1, %s) g", (n,))


def test_entity_restore_in_place_touches_only_the_entity(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text, balance numeric(12,2))")
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers(id),"
            " total numeric(12,2))"
        )
        conn.execute(
            "CREATE TABLE ledger (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id),"
            " points int)"
        )
        conn.execute("CREATE TABLE page_views (id serial PRIMARY KEY, url text)")
        # Not captured: reaches orders with ON DELETE CASCADE (the refusal case).
        conn.execute(
            "CREATE TABLE notes (id int PRIMARY KEY, order_id int REFERENCES orders(id) ON DELETE CASCADE)"
        )
        conn.execute("INSERT INTO customers SELECT g, 'c' || g, g * 10 FROM generate_series(1, 5) g")
        conn.execute("INSERT INTO orders SELECT g, (g % 5) + 1, g FROM generate_series(1, 20) g")
        conn.execute("INSERT INTO ledger SELECT g, (g % 5) + 1, g * 2 FROM generate_series(1, 20) g")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_entity", "publication": "cv_entity",
                "tables": CAPTURED},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (100, 3, 99.5)")  # after the snapshot, before T
        # Unrelated traffic in segments of their own (segment_max_age is 1s).
        for _ in range(3):
            page_views(dsn, 200)
            wait_durable(dsn, state)
            time.sleep(1.2)
        wait_durable(dsn, state)
        truth = rows_text(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t_time = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]
        time.sleep(0.05)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Customer 3 damaged: an order deleted (from the snapshot), one inserted after
            # T, the balance zeroed, a ledger row deleted (DEFAULT identity: key only).
            conn.execute("DELETE FROM orders WHERE id = 2")  # customer (2 % 5) + 1 = 3
            conn.execute("INSERT INTO orders VALUES (200, 3, 1)")
            conn.execute("UPDATE customers SET balance = 0 WHERE id = 3")
            conn.execute("DELETE FROM ledger WHERE id = 7")  # customer 3
            # Other customers change too; the restore must leave them as they are now.
            conn.execute("UPDATE customers SET balance = 0 WHERE id = 1")
            conn.execute("DELETE FROM orders WHERE id = 5")  # customer 1
        for _ in range(2):
            page_views(dsn, 200)
            wait_durable(dsn, state)
            time.sleep(1.2)
        wait_durable(dsn, state)

        def restore(*extra: str) -> Any:
            return cli(["restore", "-c", str(config), "--to", t_time, "--target-dsn", dsn,
                        "--private-key", str(keys["archive.key"]), *extra])

        # Injection strings and unknown names: one line, exit 2, nothing touched.
        before = physical(dsn)
        for bad in ("customers.id=1;DROP TABLE notes", "customers.id=1 OR 1=1", "customers.id=",
                    "nosuch.id=1", "customers.nosuch=1", "public.customers.id=99999999999"):
            proc = restore("--entity", bad, "--in-place", "--yes")
            assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        proc = restore("--entity", "customers.id=3", "--in-place")
        assert proc.returncode == 2 and "--yes" in proc.stderr, proc.stderr

        # Preview into a new schema: nothing created.
        proc = restore("--entity", "customers.id=3", "--preview", "--target-schema", "cv_preview")
        assert proc.returncode == 0, proc.stderr
        assert not schema_exists(dsn, "cv_preview")
        m = re.search(r"tables in scope: (.*)", proc.stdout)
        assert m and sorted(m.group(1).split(", ")) == [
            "public.customers", "public.ledger", "public.orders"], proc.stdout

        # Preview in place: the expected differences, nothing written.
        proc = restore("--entity", "customers.id=3", "--in-place", "--preview")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "public.customers -> public.customers: 0 to insert, 1 to update, 0 to delete, 0 unchanged" in out, out
        assert "public.orders -> public.orders: 1 to insert, 0 to update, 1 to delete, 4 unchanged" in out, out
        assert "public.ledger -> public.ledger: 1 to insert, 0 to update, 0 to delete, 3 unchanged" in out, out
        assert physical(dsn) == before

        # Only a fraction of the archive was read.
        m = re.search(r"then \d+ transactions from (\d+) of (\d+) segments", out)
        assert m and int(m.group(1)) < int(m.group(2)), out
        # Data objects (segments, indexes, snapshot parts) against the archive's data
        # objects; each fetched once (the chooser's copy of a segment serves the replay).
        m = re.search(r"read \d+ objects, (\d+) bytes of segments, indexes and snapshot parts "
                      r"\(of (\d+) bytes in the archive\), plus (\d+) bytes of catalog", out)
        assert m and int(m.group(1)) < int(m.group(2)) and int(m.group(3)) > 0, out

        # A note (not captured) on the order the restore would delete: cascade refused.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO notes VALUES (1, 200)")
        before = physical(dsn)
        proc = restore("--entity", "customers.id=3", "--in-place", "--yes")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert "cascade" in proc.stderr and "public.notes" in proc.stderr, proc.stderr
        assert physical(dsn) == before
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM notes")

        before = physical(dsn)
        proc = restore("--entity", "customers.id=3", "--in-place", "--yes")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        after = physical(dsn)
        entity_changed = {("customers", 3), ("orders", 2), ("orders", 200), ("ledger", 7)}
        for key, (xmin, ctid, text) in before.items():
            if key in entity_changed:
                continue
            assert after.get(key) == (xmin, ctid, text), f"{key} was touched"
        assert after[("customers", 3)][2] == truth[("customers", 3)]
        assert after[("orders", 2)][2] == truth[("orders", 2)]
        assert after[("ledger", 7)][2] == truth[("ledger", 7)]
        assert ("orders", 200) not in after
        assert after[("orders", 100)][2] == truth[("orders", 100)]
        # Customer 1's later changes stay.
        assert after[("customers", 1)][2] != truth[("customers", 1)]
        assert ("orders", 5) not in after
    finally:
        agent.stop()
