"""`changevault status` against a running and a stopped agent; no secret is ever printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, wait_for
from tests.integration.test_snapshots import checkpoint_at_least, has_checkpoint, setup_agent

SECRET = "pw-marker-93kq1z"
FIGURES = {
    "checkpoint_position", "checkpoint_commit_time", "lag_seconds", "behind_bytes",
    "last_snapshot_time", "oldest_restorable_time", "archive_bytes", "archive_segments",
    "agent_running",
}  # fmt: skip


def _status(config: Path) -> tuple[str, dict[str, Any]]:
    text = cli(["status", "-c", str(config)])
    assert text.returncode == 0, text.stderr
    js = cli(["status", "-c", str(config), "--json"])
    assert js.returncode == 0, js.stderr
    for out in (text.stdout + text.stderr, js.stdout + js.stderr):
        assert SECRET not in out
    return text.stdout, json.loads(js.stdout)


def test_status_running_and_stopped(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO items VALUES (1, 'a')")
    (tmp_path / "pw").write_text(SECRET + "\n")
    config, _keys, state = setup_agent(tmp_path, pg_database.dsn)
    doc = config.read_text().replace("source:\n", f"source:\n  password_file: {tmp_path / 'pw'}\n", 1)
    config.write_text(doc)
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: has_checkpoint(state), 60, "initial snapshot")
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (2, 'b')")
        wait_for(checkpoint_at_least(state, pg_database.dsn), 60, "checkpoint")
        wait_for(lambda: _status(config)[1]["archive_segments"] >= 1, 30, "a segment")
        text, figures = _status(config)
        assert set(figures) >= FIGURES
        assert figures["agent_running"] is True
        assert figures["checkpoint_position"] is not None
        assert isinstance(figures["behind_bytes"], int)
        assert figures["archive_bytes"] > 0
        assert figures["last_snapshot_time"] is not None
        assert figures["oldest_restorable_time"] is not None
        assert figures["lag_seconds"] is not None and figures["lag_seconds"] >= 0
        lines = dict(line.split(": ", 1) for line in text.splitlines())
        assert set(figures) == set(lines)
        assert lines["agent_running"] == "True"
    finally:
        assert agent.stop() == 0, agent.log()
    text, figures = _status(config)
    assert figures["agent_running"] is False
    assert figures["lease_holder"] is None
    assert figures["checkpoint_position"] is not None
    assert "agent_running: False" in text
