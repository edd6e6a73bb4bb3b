"""Make the golden archive in tests/golden/v1/ (run by hand; the tests never run it).

    .venv/bin/python -m tests.golden.make_golden [--out tests/golden/v1]

It starts a private PostgreSQL (tests/servers/postgres.py), captures a small
database with the real `changevault run` — a few tables with several types,
inserts, updates (one changing a key), deletes, a truncate-free workload
across two agent runs (two data keys) and two snapshots (the initial one and
an on-demand one) — and writes into the output directory:

    archive/        the archive directory, byte for byte
    keys/           the test keys that made it (archive.key included: test keys only)
    events.jsonl    `changevault events` output (the replayable history)
    golden.json     the source settings the archive was made with, and the
                    expected restore result at two positions (mid: before the
                    second snapshot; end: after everything)

Only run it for a NEW format version (into tests/golden/vN/): the committed
copies are the promise that old archives stay readable (docs/compatibility.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.servers.postgres import PostgresServer

DATABASE = "golden_shop"
SLOT = "cv_golden"
TABLES = ("customers", "orders", "events_log")

SCHEMA = """
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text, balance numeric(12,2),
    active boolean, born date, created timestamptz, tags text[], prefs jsonb,
    ref uuid, score double precision, avatar bytea);
CREATE TABLE orders (
    id integer PRIMARY KEY, customer_id bigint REFERENCES customers(id),
    total numeric(10,2) NOT NULL, placed timestamp, note varchar(40));
CREATE TABLE events_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind smallint, at time,
    payload json);
ALTER TABLE events_log REPLICA IDENTITY FULL;
"""

SEED = """
INSERT INTO customers VALUES
 (1, 'Ann', 'ann@example.org', 100.50, true, '1980-02-29', '2024-01-01 10:00:00+00',
  '{gold,"with space"}', '{"lang": "fr", "n": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  1.5, '\\x00ff10'),
 (2, 'Bob', NULL, -3.00, false, '1999-12-31', '2024-06-30 23:59:59.123456+02', '{}', '{"n": null}',
  NULL, 'NaN', ''),
 (3, 'Çelik ü', 'c@example.org', 0, NULL, NULL, NULL, NULL, '{}', NULL, '-Infinity', NULL);
INSERT INTO orders VALUES
 (10, 1, 12.50, '2024-02-01 08:00:00', 'first'),
 (11, 2, 99.99, '2024-02-02 09:30:00.5', NULL);
INSERT INTO events_log (kind, at, payload) VALUES (1, '08:00:00', '{"a": 1}'), (2, '23:59:59.999999', '[]');
"""

# Workload while the first agent runs (after its initial snapshot).
RUN1 = [
    "INSERT INTO customers (id, name, balance, created) VALUES (4, 'Dee', 7.25, now())",
    "UPDATE customers SET balance = balance + 1, prefs = prefs || '{\"vip\": true}' WHERE id = 1",
    "INSERT INTO orders VALUES (12, 4, 5.00, '2024-03-01 12:00', 'dee')",
    "UPDATE orders SET id = 20 WHERE id = 11",  # a key change
    "DELETE FROM orders WHERE id = 10",
    "INSERT INTO events_log (kind, payload) VALUES (3, '{\"b\": [true, null]}')",
    "UPDATE events_log SET kind = 9 WHERE id = 1",
]
# After the on-demand snapshot, with a second agent run (a new data key).
RUN2 = [
    "UPDATE customers SET email = 'bob@example.org', active = true WHERE id = 2",
    "DELETE FROM events_log WHERE id = 2",
    "INSERT INTO customers (id, name, score, avatar) VALUES (5, 'Eve', 2.25e10, '\\xdeadbeef')",
    "UPDATE orders SET total = total * 2, note = 'doubled' WHERE id = 12",
    "DELETE FROM customers WHERE id = 3",
]


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def table_text(dsn: str, schema: str, table: str) -> dict[str, Any]:
    """Column names and every row as text (UTC session), ordered by id."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        names = [
            str(r[0])
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
    return {"columns": names, "rows": [list(r) for r in rows]}


def state_of(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return {"position": str(row[0]), "tables": {t: table_text(dsn, "public", t) for t in TABLES}}


def wait_durable(dsn: str, state: Path, position: str) -> None:
    def done() -> bool:
        try:
            cp = json.loads((state / "checkpoint.json").read_text())["position"]["text"]
        except (FileNotFoundError, ValueError, KeyError):
            return False
        return lsn(cp) >= lsn(position)

    wait_for(done, 60, f"checkpoint at {position}")


def workload(dsn: str, statements: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)  # one transaction each
        with conn.transaction():  # and one multi-statement transaction
            conn.execute("UPDATE customers SET score = coalesce(score, 0) + 1 WHERE id = 1")
            conn.execute("INSERT INTO events_log (kind) VALUES (7)")


def make(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="cv-golden-"))
    server = PostgresServer(log_dir=work / "logs")
    server.start()
    try:
        dsn = server.create_database(DATABASE)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(SEED)
        keys = make_keys(work / "keys")
        state = work / "state"
        source = {"type": "postgres", "dsn": dsn, "slot": SLOT, "publication": SLOT,
                  "heartbeat_interval": "1s"}
        config = write_config(work / "cv.yaml", source=source,
                              archive_url=(work / "archive").as_uri(), keys=keys,
                              state_dir=state, extra={"log_level": "info"})
        agent = AgentProcess(config, work / "agent1.log")
        try:
            wait_for(lambda: (state / "checkpoint.json").exists(), 60, "initial snapshot")
            workload(dsn, RUN1)
            mid = state_of(dsn)
            wait_durable(dsn, state, mid["position"])
        finally:
            assert agent.stop() == 0, agent.log()
        proc = cli(["snapshot", "-c", str(config)])
        assert proc.returncode == 0, proc.stderr
        agent = AgentProcess(config, work / "agent2.log")
        try:
            time.sleep(2)
            workload(dsn, RUN2)
            end = state_of(dsn)
            wait_durable(dsn, state, end["position"])
        finally:
            assert agent.stop() == 0, agent.log()
        proc = cli(["teardown", "-c", str(config), "--yes"])
        assert proc.returncode == 0, proc.stderr
        history = cli(["events", "-c", str(config), "--private-key", str(keys["archive.key"])])
        assert history.returncode == 0, history.stderr

        out.mkdir(parents=True)
        shutil.copytree(work / "archive", out / "archive")
        (out / "keys").mkdir()
        for name, path in keys.items():
            shutil.copy2(path, out / "keys" / name)
        (out / "events.jsonl").write_text(history.stdout)
        manifest = {
            "made_by": "tests/golden/make_golden.py",
            "source": {"type": "postgres", "database": DATABASE, "slot": SLOT,
                       "publication": SLOT},
            "tables": list(TABLES),
            "restore": {"mid": mid, "end": end},
        }
        (out / "golden.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"wrote {out} ({size} bytes)")
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "v1")
    args = parser.parse_args()
    if args.out.exists():
        # Committed golden archives are never regenerated: a new format gets a new vN.
        print(f"{args.out} exists; golden archives are never regenerated (use a new vN)",
              file=sys.stderr)
        return 2
    make(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
