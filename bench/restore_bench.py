"""Restore figures: full restore vs `psql \\copy` of the same rows, and one entity.

The restore side runs `changevault restore` on the archive of the big-transaction
run once that command exists (agent.cli.HANDLERS, not PENDING); until then its
keys are null with a note, and only the peer (`\\copy`) is measured.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from psycopg import sql

from bench import workload
from bench.agent_runs import AgentRun, dir_bytes
from bench.restore_floors import measure_floors
from bench.servers import BenchServers
from tests.servers.moto import MotoS3


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


def _cli(args: list[str], env: dict[str, str] | None = None
         ) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Run the CLI; wall seconds and the most bytes it had read (rchar, /proc)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
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


_READ = re.compile(r"read (\d+) objects, (\d+) bytes of segments, indexes and snapshot parts "
                   r"\(of (\d+) bytes in the archive\), plus (\d+) bytes of catalog")


def archive_bytes_read(report: str) -> tuple[int, int, int] | None:
    """(objects, data bytes + catalog bytes) the restore fetched, and the archive's
    data bytes, from the report `changevault restore` prints."""
    m = _READ.search(report)
    if m is None:
        return None
    objects, data, archive, catalog = map(int, m.groups())
    return objects, data + catalog, archive


def _s3_copy(run: AgentRun, workdir: Path) -> tuple[Path, dict[str, str], MotoS3]:
    """The run's archive copied object by object into a moto bucket, and a config
    pointing at it: the same archive served over the S3 API."""
    moto = MotoS3(log_dir=workdir / "logs", name="moto-bench")
    moto.start()
    bucket = moto.create_bucket("bench-archive")
    client = moto.client()
    for path in sorted(p for p in run.archive.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key="a/" + str(path.relative_to(run.archive)),
                          Body=path.read_bytes())
    doc = yaml.safe_load(run.config.read_text())
    doc["archive"]["url"] = f"s3://{bucket}/a"
    doc["archive"]["s3_endpoint_url"] = moto.endpoint_url
    config = run.config.with_name("cv-s3.yaml")
    config.write_text(yaml.safe_dump(doc))
    return config, moto.env(), moto


def measure_restore(servers: BenchServers, run: AgentRun, rows: int, end_lsn: str,
                    result: RestoreResult) -> None:
    copy_rate = copy_peer(servers, run, rows)
    result.values["copy_rows_per_s"] = copy_rate
    keys = ("restore_rows_per_s", "restore_ratio", "entity_restore_seconds", "entity_restore_seconds_s3",
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
    parse_rate, fold_rate = measure_floors(run, rows)
    result.values["restore_parse_only_rows_per_s"] = parse_rate
    result.values["restore_server_fold_rows_per_s"] = fold_rate
    result.notes["restore_parse_only_rows_per_s"] = (
        f"floor of any restore that parses each event in Python: read, verify and decrypt "
        f"the archive as restore does and parse every envelope (agent.fastjson), nothing "
        f"else; {parse_rate / copy_rate:.2f} of \\copy (bench/restore_floors.py)")
    result.notes["restore_server_fold_rows_per_s"] = (
        f"floor of folding inside PostgreSQL instead: COPY the decrypted envelopes into a "
        f"jsonb staging table, DISTINCT ON the key, jsonb_populate_record into an identical "
        f"table; server time only, none of a real restore's cases; "
        f"{fold_rate / copy_rate:.2f} of \\copy (bench/restore_floors.py)")
    base_s, base_read, _ = _cli(["--help"])  # process start and imports, subtracted below
    entity = ["--entity", f"public.{workload.TABLE}.id=4242"]
    seconds, read, proc = _cli(["restore", *common, "--target-schema", "bench_entity", *entity])
    if proc.returncode != 0:
        for key in keys[2:]:
            result.values[key] = None
            result.notes[key] = f"entity restore failed ({proc.returncode}): " \
                                f"{proc.stderr.strip()[-300:]}"
        return
    archive_size = dir_bytes(run.archive)
    fetched = archive_bytes_read(proc.stdout)
    result.values["entity_restore_seconds"] = max(0.0, seconds - base_s)
    rchar = max(0, read - base_read) / max(1, archive_size)
    if fetched is None:
        result.values["entity_bytes_read_fraction"] = None
        result.notes["entity_bytes_read_fraction"] = "restore printed no read counts"
    else:
        objects, got, _data = fetched
        result.values["entity_bytes_read_fraction"] = got / max(1, archive_size)
        result.notes["entity_bytes_read_fraction"] = (
            f"archive bytes the restore fetched ({objects} objects: segments, index chunks, "
            f"snapshot parts and the whole catalog; its report) over the archive's size "
            f"({archive_size:,} bytes); rchar of the process beyond a bare start, which "
            f"also counts its Python imports and the target's answers: {rchar:.3f}")
    seconds_s3, proc = _entity_on_s3(run, common, entity, base_s)
    result.values["entity_restore_seconds_s3"] = seconds_s3
    result.notes["entity_restore_seconds"] = (
        "file:// archive; process start measured with `--help` and subtracted")
    result.notes["entity_restore_seconds_s3"] = (
        "the same archive copied into a moto S3 bucket on loopback, same entity; "
        "process start subtracted" if seconds_s3 is not None
        else f"S3 entity restore failed: {proc.stderr.strip()[-300:]}")


def _entity_on_s3(run: AgentRun, common: list[str], entity: list[str], base_s: float
                  ) -> tuple[float | None, subprocess.CompletedProcess[str]]:
    config, env, moto = _s3_copy(run, run.state.parent)
    try:
        args = ["restore", "-c", str(config), *common[2:], "--target-schema", "bench_entity_s3",
                *entity]
        seconds, _read, proc = _cli(args, env)
    finally:
        moto.stop()
    return (max(0.0, seconds - base_s) if proc.returncode == 0 else None), proc
