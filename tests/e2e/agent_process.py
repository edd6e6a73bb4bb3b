"""Run the real `changevault` command as a subprocess, with a config written for the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.crypto.keyfiles import generate_key_files


def make_keys(directory: Path) -> dict[str, Path]:
    return generate_key_files(directory)


def write_config(path: Path, *, source: dict[str, Any], archive_url: str, keys: dict[str, Path],
                 state_dir: Path, kafka: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {
        "source": source,
        "archive": {"url": archive_url, "segment_max_age": "1s"},
        "encryption": {
            "recipients": [str(keys["archive.pub"])],
            "signing_key_file": str(keys["signing.key"]),
            "trusted_signing_keys": [str(keys["signing.pub"])],
            "keyhash_key_file": str(keys["keyhash.key"]),
        },
        "state_dir": str(state_dir),
        "metrics_listen": "127.0.0.1:0",
        **(extra or {}),
    }
    if kafka is not None:
        doc["kafka"] = kafka
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True, text=True, timeout=timeout,
        # Tracebacks only for exit 1 (a bug), so a flaky failure can be diagnosed.
        env={**os.environ, "CV_TRACEBACK": "1", **(env or {})},
    )


def events(config: Path, keys: dict[str, Path], *extra: str) -> list[dict[str, Any]]:
    proc = cli(["events", "-c", str(config), "--private-key", str(keys["archive.key"]), *extra])
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


class AgentProcess:
    """`changevault run` in the background; stop() sends SIGTERM and waits."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
