"""Restore figures: full restore vs `psql \\copy` of the same rows, and one entity.

The restore side runs `changevault restore` on the archive of the big-transaction
run once that command exists (agent.cli.HANDLERS, not PENDING); until then its
keys are null with a note, and only the peer (`\\copy`) is measured.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from bench import workload
from bench.agent_runs import AgentRun, dir_bytes
from bench.servers import BenchServers


@dataclass
class RestoreResult:
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def restore_available() -> bool:
    from agent import cli

    return "restore" in cli.HANDLERS and "restore" not in cli.PENDING


def copy_peer(servers: BenchServers, run: AgentRun, rows: int) -> float:
    """Rows/s of psql \\copy loading the same rows from CSV into an identical table
    (same primary key) in a new schema."""
    psql = str(servers.pg.bin_dir / "psql")
    csv = run.state.parent / "rows.csv"
    subprocess.run([psql, "-q", "-d", run.dsn, "-c",
                    f"\\copy {workload.TABLE} TO '{csv}' CSV"], check=True, capture_output=True)
    with servers.pg.connect(run.dbname) as conn:
        conn.execute("CREATE SCHEMA bench_copy")
        conn.execute(sql.SQL("CREATE TABLE bench_copy.{} (LIKE public.{} INCLUDING ALL)").format(
            sql.Identifier(workload.TABLE), sql.Identifier(workload.TABLE)))
    started = time.monotonic()
    subprocess.run([psql, "-q", "-d", run.dsn, "-c",
                    f"\\copy bench_copy.{workload.TABLE} FROM '{csv}' CSV"],
                   check=True, capture_output=True)
    return rows / (time.monotonic() - started)


def _cli(args: list[str]) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Run the CLI; wall seconds and the most bytes it had read (rchar, /proc)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines():
                    if line.startswith("rchar:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=3600)
    sampler.join()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return time.monotonic() - started, peak[0], done


def measure_restore(servers: BenchServers, run: AgentRun, rows: int, end_lsn: str,
                    result: RestoreResult) -> None:
    copy_rate = copy_peer(servers, run, rows)
    result.values["copy_rows_per_s"] = copy_rate
    keys = ("restore_rows_per_s", "restore_ratio", "entity_restore_seconds",
            "entity_bytes_read_fraction")
    if not restore_available():
        for key in keys:
            result.values[key] = None
            result.notes[key] = "`changevault restore` is not available in this version yet"
        return
    common = ["-c", str(run.config), "--to-position", end_lsn, "--target-dsn", run.dsn,
              "--private-key", str(run.keys["archive.key"])]
    seconds, _read, proc = _cli(["restore", *common, "--target-schema", "bench_restore"])
    if proc.returncode != 0:
        for key in keys[:2]:
            result.values[key] = None
            result.notes[key] = f"restore failed ({proc.returncode}, after {seconds:.0f} s): " \
                                f"{proc.stderr.strip()[-300:]}"
    else:
        restore_rate = rows / seconds
        result.values["restore_rows_per_s"] = restore_rate
        result.values["restore_ratio"] = restore_rate / copy_rate
    base_s, base_read, _ = _cli(["--help"])  # process start and imports, subtracted below
    seconds, read, proc = _cli(["restore", *common, "--target-schema", "bench_entity",
                                "--entity", f"public.{workload.TABLE}.id=4242"])
    if proc.returncode != 0:
        for key in keys[2:]:
            result.values[key] = None
            result.notes[key] = f"entity restore failed ({proc.returncode}): " \
                                f"{proc.stderr.strip()[-300:]}"
        return
    result.values["entity_restore_seconds"] = max(0.0, seconds - base_s)
    result.values["entity_bytes_read_fraction"] = max(0, read - base_read) / max(
        1, dir_bytes(run.archive))
    result.notes["entity_restore_seconds"] = (
        "file:// archive only; process start measured with `--help` and subtracted")
    result.notes["entity_bytes_read_fraction"] = (
        "bytes the process read (rchar) beyond a bare start, over the archive's size: "
        "an upper bound (includes reading the target's answers)")
