"""Private servers for a benchmark run, reusing the test fixtures' classes."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers.postgres import PostgresServer
from tests.servers.tansu import TansuBroker


@dataclass
class BenchServers:
    pg: PostgresServer
    kafka: TansuBroker
    workdir: Path


@contextlib.contextmanager
def started_servers() -> Iterator[BenchServers]:
    with tempfile.TemporaryDirectory(prefix="cv-bench-") as tmp:
        workdir = Path(tmp)
        pg = PostgresServer(log_dir=workdir / "logs", name="pg-bench",
                            extra_settings={"max_wal_size": "2GB"})
        kafka = TansuBroker(log_dir=workdir / "logs", name="tansu-bench")
        try:
            pg.start()
            kafka.start()
            yield BenchServers(pg, kafka, workdir)
        finally:
            kafka.stop()
            pg.cleanup()
