"""Running the real agent (`changevault run`) against the bench servers, and watching it."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from bench import workload
from bench.servers import BenchServers
from tests.e2e.agent_process import AgentProcess, make_keys, write_config
from tests.servers.processes import free_port

log = logging.getLogger("bench")


@dataclass
class AgentRun:
    """One agent on its own database, slot, topics and archive."""

    name: str
    dbname: str
    dsn: str
    config: Path
    state: Path
    archive: Path
    keys: dict[str, Path]
    kafka: dict[str, Any]
    metrics_port: int
    process: AgentProcess | None = None

    def start(self, timeout: float = 120) -> None:
        self.process = AgentProcess(self.config, self.state.parent / f"{self.name}.log")
        wait_checkpoint(self, None, timeout)

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop()
            if code != 0:
                raise RuntimeError(f"agent {self.name} exited {code}: {self.process.log()[-2000:]}")
            self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.proc.pid


def new_agent_run(servers: BenchServers, name: str, producer: str) -> AgentRun:
    """A fresh database with the bench table and a config for it (agent not started)."""
    dbname = f"bench_{name}"
    dsn = servers.pg.create_database(dbname)
    with servers.pg.connect(dbname) as conn:
        workload.prepare(conn)
    root = servers.workdir / name
    keys = make_keys(root / "keys")
    kafka = {"bootstrap_servers": [servers.kafka.bootstrap], "topic_prefix": f"bench_{name}",
             "replication_factor": 1, "min_insync_replicas": 1, "producer": producer}
    port = free_port()
    config = write_config(
        root / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": f"cv_{name}", "publication": f"cv_{name}",
                "tables": [f"public.{workload.TABLE}"]},
        archive_url=(root / "archive").as_uri(), keys=keys, state_dir=root / "state", kafka=kafka,
        extra={"metrics_listen": f"127.0.0.1:{port}"},
    )
    return AgentRun(name, dbname, dsn, config, root / "state", root / "archive", keys, kafka,
                    port)


def drop_agent_run(servers: BenchServers, run: AgentRun) -> None:
    """Stop the agent (a backlog may make it miss the stop timeout: then it is killed,
    which costs nothing here) and drop its slot and database."""
    try:
        run.stop()
    except RuntimeError as exc:
        log.warning("%s", str(exc).splitlines()[0])
    servers.pg.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                       " WHERE database = %s", params=(run.dbname,))
    servers.pg.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(run.dbname)))


def checkpoint_lsn(state: Path) -> int | None:
    try:
        doc = json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    position = doc["position"]
    # A PostgreSQL commit position names the commit record's start; its end
    # (where streaming resumes) is what pg_current_wal_lsn() shows after the
    # commit, so compare that: otherwise the wait lasts until the next WAL
    # heartbeat moves the checkpoint past the last commit.
    end = dict(position.get("extra", [])).get("end_lsn")
    return workload.lsn_int(end if end is not None else position["text"])


def wait_checkpoint(run: AgentRun, end_lsn: str | None, timeout: float,
                    poll: float = 0.05, on_poll: Any = None) -> float:
    """Wait until the checkpoint exists (end_lsn None) or reached end_lsn; monotonic time then."""
    deadline = time.monotonic() + timeout
    target = None if end_lsn is None else workload.lsn_int(end_lsn)
    while time.monotonic() < deadline:
        if on_poll is not None:
            on_poll()
        cp = checkpoint_lsn(run.state)
        if cp is not None and (target is None or cp >= target):
            return time.monotonic()
        if run.process is not None and not run.process.alive():
            raise RuntimeError(f"agent {run.name} died: {run.process.log()[-2000:]}")
        time.sleep(poll)
    raise TimeoutError(f"agent {run.name}: checkpoint did not reach {end_lsn} in {timeout}s")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the process's peak resident set so far (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
