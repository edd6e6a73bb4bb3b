"""The documented, seeded PostgreSQL workloads of the benchmarks (docs/benchmarks.md).

The mixed workload: transactions of exactly 100 row changes on the 8-column
table of issue 3 (bigint, text, numeric, timestamptz, bool, jsonb, int, date):
60 inserts of new ids, 30 updates of one random live id range (random() under
setseed(0.42), so the same on every run), 10 deletes of the oldest live ids.
Generated server-side by a procedure that commits every 100 rows, so the
load generator costs no client round trips and never limits what is measured.
"""

from __future__ import annotations

from typing import Any

import psycopg

TABLE = "bench_rows"
ROWS_PER_TX = 100

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS bench_rows (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    amount numeric(12,2) NOT NULL,
    updated_at timestamptz NOT NULL,
    active bool NOT NULL,
    attrs jsonb NOT NULL,
    qty int NOT NULL,
    born date NOT NULL
)
"""

# Row g's values are a pure function of g: identical across runs and slots.
_ROW_SELECT = """
    SELECT g, 'customer ' || md5(g::text), (g % 100000) / 100.0 + 0.01,
           timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g % 3 = 0,
           jsonb_build_object('tier', g % 5, 'tags', jsonb_build_array('a', g % 7)),
           (g % 1000)::int, date '2020-01-01' + (g % 3650)::int
"""

MIXED_PROCEDURE = f"""
CREATE OR REPLACE PROCEDURE bench_mixed(first_tx bigint, n_tx bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i bigint;
    a bigint;
BEGIN
    PERFORM setseed(0.42);
    FOR i IN first_tx .. first_tx + n_tx - 1 LOOP
        -- 60 inserts: ids i*60+1 .. i*60+60
        INSERT INTO bench_rows {_ROW_SELECT} FROM generate_series(i * 60 + 1, i * 60 + 60) g;
        -- 30 updates: a live range; ids <= i*10+10 are deleted, ids <= i*60+60 exist
        a := i * 10 + 11 + floor(random() * (i * 50 + 21))::bigint;
        UPDATE bench_rows SET name = name || '!', amount = amount + 1,
               updated_at = updated_at + interval '1 hour', active = NOT active,
               attrs = attrs || '{{"seen": true}}', qty = qty + 1
         WHERE id BETWEEN a AND a + 29;
        -- 10 deletes: the oldest live ids
        DELETE FROM bench_rows WHERE id BETWEEN i * 10 + 1 AND i * 10 + 10;
        COMMIT;
    END LOOP;
END $$
"""


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Create the table and the workload procedure (idempotent)."""
    conn.execute(TABLE_DDL)
    conn.execute(MIXED_PROCEDURE)


def run_mixed(conn: psycopg.Connection[Any], first_tx: int, n_tx: int, chunk: int = 500) -> None:
    """Commit `n_tx` mixed transactions (100 changes each) starting at transaction `first_tx`.

    Transaction numbers must continue across calls (ids derive from them).
    """
    done = 0
    while done < n_tx:
        step = min(chunk, n_tx - done)
        conn.execute("CALL bench_mixed(%s, %s)", (first_tx + done, step))
        done += step


def insert_one_transaction(conn: psycopg.Connection[Any], first_id: int, rows: int) -> None:
    """One transaction of `rows` inserts (the big-transaction workload)."""
    conn.execute(
        # %% because this statement has parameters (the SELECT uses the modulo operator)
        "INSERT INTO bench_rows" + _ROW_SELECT.replace("%", "%%")
        + " FROM generate_series(%s::bigint, %s::bigint) g",
        (first_id, first_id + rows - 1),
    )


def current_lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)
