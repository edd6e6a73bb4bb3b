"""Two lower bounds on a full restore's time, measured beside it on the same archive.

- parse only: read the archive as restore does (catalog, segments, signatures,
  decryption, transactions) and parse every event envelope with the JSON parser
  restore uses, nothing folded or written. Any restore that looks at each event
  in Python pays at least this.
- server fold: the "fold inside PostgreSQL" design. The decrypted envelopes
  are COPYed into a temporary staging table, then the last event per key wins
  (`DISTINCT ON (key) ... ORDER BY key, seq DESC`) and `jsonb_populate_record`
  turns it into a row of an identical table. Only the server's time counts
  (the envelopes are read and written to a file first), with none of the
  cases a real restore needs (key changes, truncates, unchanged TOAST, bytea
  and BC dates, verification): a floor for that design, not an implementation.

Both exist so that docs/benchmarks.md can say why the restore target is
missed with numbers from the same run, not estimates.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from agent import fastjson
from agent.archive.access import data_key_opener, open_store, trusted_keys
from agent.archive.reader import ArchiveReader, segment_entries
from agent.settings import load_settings
from bench import workload
from bench.agent_runs import AgentRun

_CHUNK = 1 << 20


def _reader(config: Path, private_key: Path) -> ArchiveReader:
    settings = load_settings(config)
    return ArchiveReader(open_store(settings), trusted_keys(settings),
                         data_key_opener(settings, private_key))


def parse_only(config: Path, private_key: Path) -> tuple[float, int]:
    """(events/s, events) of reading and parsing every event of the archive."""
    reader = _reader(config, private_key)
    started = time.monotonic()
    n = 0
    for tx in reader.transactions(segment_entries(reader.entries())):
        for env in tx.events:
            fastjson.loads(env)
            n += 1
        tx.events.close()
    return n / (time.monotonic() - started), n


def spool_envelopes(config: Path, private_key: Path, spool: Path) -> None:
    """Every decrypted envelope of the archive into `spool`, one per line (untimed)."""
    reader = _reader(config, private_key)
    with spool.open("wb") as out:
        for tx in reader.transactions(segment_entries(reader.entries())):
            for env in tx.events:
                out.write(env + b"\n")
            tx.events.close()


def server_fold(dsn: str, spool: Path, rows: int) -> float:
    """Rows/s of staging the spooled envelopes and folding them into a new table on the
    server (the server's time only)."""
    table = sql.Identifier("bench_server_fold", workload.TABLE)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE SCHEMA bench_server_fold")
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            table, sql.Identifier("public", workload.TABLE)))
        conn.execute("CREATE TEMP TABLE stage (seq bigint GENERATED ALWAYS AS IDENTITY,"
                     " ev jsonb NOT NULL)")
        conn.commit()
        started = time.monotonic()
        with spool.open("rb") as f, conn.cursor().copy("COPY stage (ev) FROM STDIN") as copy:
            # JSON text holds no raw tab or newline; its backslashes need COPY's escape.
            while chunk := f.read(_CHUNK):
                copy.write(chunk.replace(b"\\", b"\\\\"))
        conn.execute(sql.SQL(
            "INSERT INTO {table} SELECT r.* FROM ("
            " SELECT DISTINCT ON (k) k, op, after FROM ("
            "  SELECT ev->'after'->'id' AS k, seq, ev->>'op' AS op, ev->'after' AS after"
            "  FROM stage) x ORDER BY k, seq DESC) f,"
            " jsonb_populate_record(NULL::{table}, f.after) r"
            " WHERE f.op <> 'd'").format(table=table))
        conn.commit()
        seconds = time.monotonic() - started
        got = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        if got is None or int(got[0]) != rows:
            raise RuntimeError(f"server fold produced {got} rows, expected {rows}")
        conn.execute("DROP SCHEMA bench_server_fold CASCADE")
    return rows / seconds


def measure_floors(run: AgentRun, rows: int) -> tuple[float, float]:
    """(parse-only rows/s, server-fold rows/s) on the run's archive."""
    with tempfile.TemporaryDirectory(prefix="cv-floor-", dir=run.state.parent) as tmp:
        spool = Path(tmp) / "envelopes.jsonl"
        key = run.keys["archive.key"]
        parse_rate, events = parse_only(run.config, key)
        if events != rows:
            raise RuntimeError(f"the archive holds {events} events, expected {rows}")
        spool_envelopes(run.config, key, spool)
        return parse_rate, server_fold(run.dsn, spool, rows)
