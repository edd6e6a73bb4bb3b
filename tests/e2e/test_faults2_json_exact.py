"""Numbers inside json/jsonb values survive capture and restore exactly: jsonb
keeps `1.50` (a double would make it 1.5), `json` keeps `1e400` (beyond a
double: `run` used to stop on it with exit 3), and a decimal of 30 digits is
not rounded — in the archived event and in the restored table, with the
restore's read-back verification passing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_process import AgentProcess, cli, make_keys, wait_for, write_config
from tests.e2e.fault_tools import checkpoint_lsn, drain_and_stop
from tests.integration.test_restore_bench_shape import _rows

# With jsonb's spacing, so that the json column's verbatim text is what a restore
# writes too (docs/restore.md).
DOCS = [
    '{"price": 19.90, "tags": ["a", 1.0], "big": 12345678901234567890.123456789}',
    '{"huge": [1e400, -1E-400], "n": 7}',
    '[0.10000000000000001, 1.5e3, null, {"deep": {"x": 2.50}}]',
]


def compact(doc: str) -> str:
    return doc.replace(", ", ",").replace(": ", ":")


def test_json_numbers_are_exact_in_events_and_restores(pg_database: Any, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, j json, jb jsonb, ja jsonb[])")
        # In the snapshot
        conn.execute("INSERT INTO docs VALUES (1, %s, %s, ARRAY[%s::jsonb, NULL])",
                     (DOCS[0], DOCS[0], DOCS[0]))
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_exact", "publication": "cv_exact"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: checkpoint_lsn(state) is not None, 60, "initial snapshot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i, doc in enumerate(DOCS, start=2):
                # (an element that is itself a JSON array would read as a dimension:
                # docs/restore.md, known limits)
                conn.execute("INSERT INTO docs VALUES (%s, %s, %s,"
                             " ARRAY[jsonb_build_object('w', %s::jsonb)])", (i, doc, doc, doc))
            conn.execute("UPDATE docs SET jb = jb || '{\"price\": 20.10}' WHERE id = 1")
        assert drain_and_stop(agent, dsn, state) == 0, agent.log()[-2000:]
    finally:
        if agent.alive():
            agent.kill()

    events = cli(["events", "-c", str(config), "--private-key", str(keys["archive.key"])])
    assert events.returncode == 0, events.stderr
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert [(e["op"], e["after"]["id"]) for e in lines] == [("r", 1), ("c", 2), ("c", 3), ("c", 4), ("u", 1)]
    assert f'"j":{compact(DOCS[1])}' in events.stdout  # 1e400 as written, not null, not a stop
    assert '"price":20.10' in events.stdout and '"big":12345678901234567890.123456789' in events.stdout

    proc = cli(["restore", "-c", str(config), "--to", "2999-01-01T00:00:00", "--target-dsn", dsn,
                "--target-schema", "r_exact", "--private-key", str(keys["archive.key"])])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "public.docs -> r_exact.docs: 4 rows" in proc.stdout and " ok" in proc.stdout, proc.stdout
    assert _rows(dsn, "r_exact.docs") == _rows(dsn, "public.docs")
