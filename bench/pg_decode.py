"""Decode throughput: changevault's PostgreSQL source vs pg_recvlogical on identical slots.

Both slots are created before the workload, on the same publication, and read
with the same options (pgoutput protocol 2, streaming on, messages on), so
each consumer decodes exactly the same WAL. changevault's figure counts
finished ChangeEvents with typed values (replication client + pgoutput
decoder + event builder, i.e. connectors.postgres.source.PostgresSource).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from agent.events import Position, Transaction
from agent.settings import Settings
from bench import workload
from connectors.postgres.source import PostgresSource
from tests.servers.postgres import PostgresServer

PUBLICATION = "bench_pub"


@dataclass
class DecodeRun:
    changes: int
    recvlogical_s: float
    recvlogical_walsender_cpu_s: float | None
    changevault_s: float
    changevault_walsender_cpu_s: float | None


def setup_database(pg: PostgresServer, dbname: str) -> str:
    dsn = pg.create_database(dbname)
    with pg.connect(dbname) as conn:
        workload.prepare(conn)
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(PUBLICATION), sql.Identifier(workload.TABLE)))
    return dsn


def create_slot(pg: PostgresServer, dbname: str, slot: str) -> str:
    rows = pg.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                      dbname, params=(slot,))
    return str(rows[0][0])


def drop_slot(pg: PostgresServer, dbname: str, slot: str) -> None:
    # The consumer's walsender may still be exiting after the client closed.
    deadline = time.monotonic() + 30
    while True:
        try:
            pg.execute("SELECT pg_drop_replication_slot(%s)", dbname, params=(slot,))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class WalsenderCpu:
    """Samples the CPU seconds of the walsender serving `slot` (Linux /proc)."""

    def __init__(self, pg: PostgresServer, dbname: str, slot: str) -> None:
        self._pg, self._db, self._slot = pg, dbname, slot
        self.cpu_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WalsenderCpu:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = float(__import__("os").sysconf("SC_CLK_TCK"))
        pid = None
        while not self._stop.wait(0.1):
            if pid is None:
                rows = self._pg.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                    self._db, params=(self._slot,))
                pid = rows[0][0] if rows and rows[0][0] else None
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the walsender exited; keep the last sample
            self.cpu_s = (int(fields[11]) + int(fields[12])) / tick


def drain_recvlogical(pg: PostgresServer, dbname: str, slot: str, end_lsn: str) -> float:
    cmd = [str(pg.bin_dir / "pg_recvlogical"), "-d", pg.dsn(dbname), "--slot", slot, "--start",
           "--endpos", end_lsn, "--no-loop", "-f", "/dev/null",
           "-o", "proto_version=2", "-o", "streaming=on", "-o", "messages=true",
           "-o", f"publication_names={PUBLICATION}"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - started


def source_settings(pg: PostgresServer, dbname: str, slot: str, workdir: Path) -> Settings:
    keys = workdir / "unused.pub"
    return Settings.model_validate({
        "source": {"type": "postgres", "dsn": pg.dsn(dbname), "slot": slot,
                   "publication": PUBLICATION, "tables": [f"public.{workload.TABLE}"]},
        "archive": {"url": (workdir / "archive").as_uri()},
        "encryption": {"recipients": [str(keys)]},
        "state_dir": str(workdir / "state"),
    })


def decode_changevault(settings: Settings, start_lsn: str, changes: int,
                       profile: cProfile.Profile | None = None) -> float:
    """Seconds to decode `changes` ChangeEvents from the slot with PostgresSource."""
    source = PostgresSource(settings, settings.state_dir)
    lsn = workload.lsn_int(start_lsn)
    source.start(Position(start_lsn, (lsn,)))
    seen = 0
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    try:
        for item in source.stream():
            if isinstance(item, Transaction):
                for _event in item.events:
                    seen += 1
                source.confirm(item.position)
                if seen >= changes:
                    break
    finally:
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - started
        source.close()
    if seen != changes:
        raise RuntimeError(f"expected {changes} changes from the slot, decoded {seen}")
    return elapsed


def measure(pg: PostgresServer, workdir: Path, run_id: int, n_tx: int,
            profile: bool = False) -> tuple[DecodeRun, str | None]:
    """One run on a fresh database: both slots, the workload, both consumers."""
    dbname = f"bench_decode_{run_id}"
    setup_database(pg, dbname)
    ours_slot, peer_slot = f"cv_bench_{run_id}", f"recv_bench_{run_id}"
    start = create_slot(pg, dbname, ours_slot)
    create_slot(pg, dbname, peer_slot)
    with pg.connect(dbname) as conn:
        workload.run_mixed(conn, 0, n_tx)
        end = workload.current_lsn(conn)
    changes = n_tx * workload.ROWS_PER_TX
    with WalsenderCpu(pg, dbname, peer_slot) as peer_cpu:
        recv_s = drain_recvlogical(pg, dbname, peer_slot, end)
    run_dir = workdir / f"decode-{run_id}"
    run_dir.mkdir()
    prof = cProfile.Profile() if profile else None
    with WalsenderCpu(pg, dbname, ours_slot) as our_cpu:
        ours_s = decode_changevault(source_settings(pg, dbname, ours_slot, run_dir), start,
                                    changes, prof)
    drop_slot(pg, dbname, ours_slot)
    drop_slot(pg, dbname, peer_slot)
    pg.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
    return (DecodeRun(changes, recv_s, peer_cpu.cpu_s, ours_s, our_cpu.cpu_s),
            top_frames(prof) if prof is not None else None)


def top_frames(profile: cProfile.Profile, limit: int = 15) -> str:
    out = io.StringIO()
    stats: Any = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line for line in lines[start:] if line.strip())
