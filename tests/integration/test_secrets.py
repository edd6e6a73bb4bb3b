"""Known secrets — the database password and the key material — never appear in
logs (debug level included), CLI output, /metrics or `status` output.

A private PostgreSQL whose pg_hba requires SCRAM for the agent's role, so the
password is really used; the agent runs with `password_file` and Kafka."""

from __future__ import annotations

import base64
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import (
    PASSWORD_ROLE,
    checkpoint_lsn,
    require_password,
    scrape,
    start_with_metrics,
    wait_caught_up,
)
from tests.servers.postgres import PostgresServer

PASSWORD = "Sup3r-s3cret-db-pa55-4e1c"
WRONG = "Wr0ng-s3cret-db-pa55-b7d2"


@pytest.fixture
def scram_pg(server_log_dir: Path) -> Iterator[tuple[PostgresServer, str]]:
    server = PostgresServer(log_dir=server_log_dir, name="pg-secrets")
    try:
        server.start()
        yield server, require_password(server, PASSWORD)
    finally:
        server.cleanup()


def secret_forms(keys: dict[str, Path]) -> set[str]:
    """The password and every private key's material as it might leak: the file
    text, its base64 body, and the raw secret bytes in base64 and hex."""
    forms = {PASSWORD, WRONG}
    for name in ("archive.key", "signing.key", "keyhash.key"):
        text = keys[name].read_text()
        body = "".join(ln for ln in text.splitlines() if ln and not ln.startswith("-----"))
        raw = base64.b64decode(body)
        secret = raw[-32:]  # PKCS#8 X25519/Ed25519 keys end with the 32-byte secret
        forms |= {body, secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode().rstrip("="),
                  base64.urlsafe_b64encode(secret).decode().rstrip("=")}
    return forms


def assert_clean(what: str, text: str, forms: set[str]) -> None:
    for form in forms:
        assert form not in text, f"{what} contains secret material ({form[:6]}...)"


def test_secrets_never_appear(scram_pg: tuple[PostgresServer, str], kafka_broker: Any,
                              tmp_path: Path) -> None:
    server, dsn = scram_pg
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text)")
    keys = make_keys(tmp_path / "keys")
    pw_file = tmp_path / "db-password"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    state = tmp_path / "state"

    def configure(port: int) -> Path:
        return write_config(
            tmp_path / "cv.yaml",
            source={"type": "postgres", "dsn": dsn, "password_file": str(pw_file),
                    "slot": "cv_secrets", "publication": "cv_secrets"},
            archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
            kafka={"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": f"cv_secrets_{prefix}",
                   "replication_factor": 1, "min_insync_replicas": 1},
            extra={"metrics_listen": f"127.0.0.1:{port}", "log_level": "debug"},
        )

    prefix = uuid.uuid4().hex[:8]
    config = configure(0)
    forms = secret_forms(keys)
    outputs: list[tuple[str, str]] = []

    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        proc = cli(list(args))
        outputs.append((" ".join(args[:1]), proc.stdout + proc.stderr))
        return proc

    assert run_cli("check", "-c", str(config)).returncode == 0, outputs[-1]
    agent, port = start_with_metrics(configure, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
            conn.execute("INSERT INTO accounts VALUES (1, 'ann'), (2, %s)", (PASSWORD,))
        wait_caught_up(f"{dsn}?password={PASSWORD}", state)
        outputs.append(("/metrics", scrape(port)))
        for path in ("/healthz", "/readyz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    outputs.append((path, r.read().decode()))
            except OSError as exc:
                outputs.append((path, str(exc)))
        run_cli("status", "-c", str(config))
        run_cli("status", "-c", str(config), "--json")
    finally:
        code = agent.stop()
    assert code == 0, agent.log()[-2000:]
    outputs.append(("agent log", agent.log()))
    proc = run_cli("events", "-c", str(config), "--private-key", str(keys["archive.key"]))
    assert proc.returncode == 0
    # The password stored as data is data: it is printed by `events` (decrypted
    # on purpose), so that output is only checked for key material.
    outputs.pop()
    assert_clean("events", proc.stdout.replace(PASSWORD, ""), forms)
    assert_clean("events stderr", proc.stderr, forms)
    run_cli("verify", "-c", str(config), "--decrypt", "--private-key", str(keys["archive.key"]))

    # A wrong password: refused, and not echoed by check nor by a run's retries.
    pw_file.write_text(WRONG + "\n")
    run_cli("check", "-c", str(config))
    failing = AgentProcess(config, tmp_path / "agent-wrong.log")
    time.sleep(4)
    failing.stop()
    outputs.append(("agent log (wrong password)", failing.log()))
    assert re.search("password authentication failed", failing.log()), failing.log()[-1000:]

    for what, text in outputs:
        assert_clean(what, text, forms)
    assert PASSWORD_ROLE in agent.log() or PASSWORD_ROLE in outputs[0][1]
    # Every log file the agent wrote into the test directory, too.
    for log_file in tmp_path.rglob("*.log"):
        assert_clean(str(log_file), log_file.read_text(errors="replace"), forms)
    assert server.running
