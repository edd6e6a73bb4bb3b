"""A committed value the event format cannot carry (a json number beyond the
double range, valid JSON that parses as inf): `run` stops with exit 3 and one
line naming the table, instead of writing `null` or retrying forever, and the
checkpoint never passes that transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import checkpoint_lsn, current_lsn, drain_and_stop, one_error_line


def test_json_number_beyond_the_double_range_stops_run_with_exit_3(
    pg_database: Any, tmp_path: Path
) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body json)")
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_huge", "publication": "cv_huge"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("""INSERT INTO docs VALUES (1, '{"fine": 1.5}')""")
        assert drain_and_stop(agent, dsn, state) == 0, agent.log()[-2000:]
    finally:
        if agent.alive():
            agent.kill()
    before = checkpoint_lsn(state)
    with psycopg.connect(dsn, autocommit=True) as conn:
        bad_at = current_lsn(dsn)
        conn.execute("""INSERT INTO docs VALUES (2, '{"huge": [1e400]}')""")

    proc = cli(["run", "-c", str(config)], timeout=90)
    line = one_error_line(proc, 3)
    assert "public.docs" in line and "double range" in line and "null" in line, line
    # Nothing past the bad transaction is confirmed: a fixed agent resumes before it.
    after = checkpoint_lsn(state)
    assert after is not None and before is not None and before <= after <= bad_at
