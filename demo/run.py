"""The README's main job on a built-in local default.

A private PostgreSQL, the local Kafka-protocol broker (tansu) and an archive in
a directory: `changevault run` captures a small loyalty-program workload, a
"bad update" zeroes every balance, and `changevault restore --before-tx`
rebuilds the tables as they were just before it into a new schema. Prints the
before/after comparison and cleans up. Uses the same server launchers as the
tests (tests/servers).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from agent.crypto.keyfiles import generate_key_files
from tests.servers.postgres import PostgresServer
from tests.servers.tansu import TansuBroker

SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL);
CREATE TABLE accounts (
    customer_id bigint PRIMARY KEY REFERENCES customers(id),
    points integer NOT NULL DEFAULT 0,
    tier text NOT NULL DEFAULT 'bronze');
CREATE TABLE loyalty_ledger (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    delta integer NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
"""


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=300
    )


def earn(conn: psycopg.Connection[Any], rng: random.Random, n: int) -> None:
    for _ in range(n):
        cid = rng.randint(1, 50)
        delta = rng.randint(5, 120)
        with conn.transaction():
            conn.execute(
                "INSERT INTO loyalty_ledger (customer_id, delta, reason) VALUES (%s, %s, %s)",
                (cid, delta, rng.choice(["purchase", "referral", "birthday"])),
            )
            conn.execute(
                "UPDATE accounts SET points = points + %s,"
                " tier = CASE WHEN points + %s > 1000 THEN 'gold' ELSE tier END"
                " WHERE customer_id = %s",
                (delta, delta, cid),
            )


def checkpoint_at_least(state: Path, lsn: str) -> bool:
    def as_int(text: str) -> int:
        hi, lo = text.split("/")
        return (int(hi, 16) << 32) + int(lo, 16)

    try:
        doc = json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return False
    return as_int(doc["position"]["text"]) >= as_int(lsn)


def wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="changevault-demo-"))
    rng = random.Random(42)
    started = time.monotonic()
    pg = PostgresServer(log_dir=work / "logs", name="demo-postgres")
    broker = TansuBroker(log_dir=work / "logs", name="demo-tansu")
    agent: subprocess.Popen[bytes] | None = None
    try:
        say(f"starting a private PostgreSQL and a local broker (work dir {work})")
        pg.start()
        broker.start()
        dsn = pg.create_database("loyalty")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            for cid in range(1, 51):
                conn.execute("INSERT INTO customers VALUES (%s, %s, %s)",
                             (cid, f"customer {cid}", f"c{cid}@example.com"))
                conn.execute("INSERT INTO accounts (customer_id, points) VALUES (%s, %s)",
                             (cid, rng.randint(0, 500)))

        keys = generate_key_files(work / "keys")
        state = work / "state"
        config = work / "changevault.yaml"
        config.write_text(yaml.safe_dump({
            "source": {"type": "postgres", "dsn": dsn},
            "kafka": {"bootstrap_servers": [broker.bootstrap], "topic_prefix": "demo",
                      "replication_factor": 1, "min_insync_replicas": 1},
            "archive": {"url": (work / "archive").as_uri(), "segment_max_age": "1s"},
            "encryption": {
                "recipients": [str(keys["archive.pub"])],
                "signing_key_file": str(keys["signing.key"]),
                "trusted_signing_keys": [str(keys["signing.pub"])],
                "keyhash_key_file": str(keys["keyhash.key"]),
                "private_key_file": str(keys["archive.key"]),
            },
            "state_dir": str(state),
            "metrics_listen": "127.0.0.1:0",
        }))
        say("changevault run: initial snapshot, then streaming")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
            stdout=open(work / "agent.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        wait(lambda: (state / "checkpoint.json").exists(), "the initial snapshot")

        with psycopg.connect(dsn, autocommit=True) as conn:
            say("loyalty traffic: 200 point-earning transactions")
            earn(conn, rng, 200)
            before = dict(conn.execute("SELECT customer_id, points FROM accounts").fetchall())
            with conn.transaction():
                bad_tx = conn.execute("SELECT txid_current()::text").fetchone()[0]  # type: ignore[index]
                conn.execute("UPDATE accounts SET points = 0")
            say(f"the bad update: transaction {bad_tx} set every balance to 0")
            earn(conn, rng, 50)
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        wait(lambda: checkpoint_at_least(state, end), "the agent to make everything durable")
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        say(f"agent stopped (exit {agent.returncode}); archive verified:")
        print("  " + cli("verify", "-c", str(config)).stdout.strip())

        say(f"changevault restore --before-tx {bad_tx} into schema restored")
        proc = cli("restore", "-c", str(config), "--before-tx", bad_tx,
                   "--target-dsn", dsn, "--target-schema", "restored")
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr, end="")
            return proc.returncode

        with psycopg.connect(dsn) as conn:
            now = dict(conn.execute("SELECT customer_id, points FROM public.accounts").fetchall())
            restored = dict(conn.execute("SELECT customer_id, points FROM restored.accounts").fetchall())
        print(f"\n  {'customer':>8} {'before bad update':>18} {'production now':>15} {'restored':>9}")
        for cid in sorted(before)[:10]:
            print(f"  {cid:>8} {before[cid]:>18} {now[cid]:>15} {restored[cid]:>9}")
        same = restored == before
        say(f"restored balances equal the balances just before the bad update: {same}")
        say(f"done in {time.monotonic() - started:.0f}s")
        return 0 if same else 1
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        broker.stop()
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
