"""A private S3 endpoint for tests: `moto_server` (moto[server]) on a free port.

State lives in the moto process's memory: stop() forgets every bucket, so
simulate an outage with pause()/resume() (SIGSTOP/SIGCONT: requests hang,
then complete) or stop()/start() when an empty store is what the test wants.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tests.servers.lifecycle import ServerProcess
from tests.servers.processes import (
    MissingServerBinary,
    ServerStartError,
    free_port,
    pause,
    resume,
    spawn,
    terminate,
    wait_until,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

INSTALL_HINT = "pip install 'moto[server]' into the test virtualenv (.venv)"

# Dummy credentials: moto accepts any; real AWS is never reached because every
# client is pointed at endpoint_url.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"


def find_moto_server() -> Path:
    """moto_server next to the running interpreter (the venv), else on PATH."""
    candidates = [Path(sys.executable).parent / "moto_server"]
    on_path = shutil.which("moto_server")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise MissingServerBinary(
        f"expected moto_server at {candidates[0]} or on PATH, found none: {INSTALL_HINT}"
    )


class MotoS3(ServerProcess):
    host = "127.0.0.1"
    region = REGION
    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY

    def __init__(self, *, log_dir: Path, name: str = "moto") -> None:
        self.binary = find_moto_server()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = log_dir / f"{name}-{os.getpid()}-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start (again, on the same port: the store starts empty)."""
        if self.running:
            return
        self._start_on_free_port()
        self._started_once = True

    def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process is not None:
            self.resume()  # a stopped process would ignore SIGTERM until SIGCONT
            terminate(self._process, signal.SIGTERM, timeout=10)
            self._process = None
        self._close_log()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel
        but never answered, like a hung endpoint. State is kept."""
        pause(self._process)

    def resume(self) -> None:
        resume(self._process)

    # -- clients ----------------------------------------------------------------

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this endpoint with dummy credentials."""
        import boto3
        from botocore.config import Config

        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(**{"retries": {"max_attempts": 2}, **config}),
        )
        return client

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. the changevault CLI) to reach this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    # -- internals --------------------------------------------------------------

    def _start_once(self) -> None:
        self._log = self.log_path.open("ab")
        self._process = spawn(
            [self.binary, "-H", self.host, "-p", str(self.port)],
            self._log,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        try:
            wait_until(
                self._answers,
                timeout=60,
                what=f"moto_server on port {self.port}",
                log_path=self.log_path,
                process=self._process,
                interval=0.1,
            )
        except ServerStartError:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False
