"""Verification reads the restored tables back: a row changed after the load is exit 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.errors import IntegrityError
from agent.restore.command import RestoreOptions, run_restore
from agent.settings import load_settings
from connectors.postgres.applier import PgApplier, text_value
from tests.e2e.agent_process import AgentProcess, make_keys, wait_for, write_config


def _archive_of(dsn: str, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    keys = make_keys(tmp_path / "keys")
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_verify", "publication": "cv_verify"},
        archive_url=(tmp_path / "archive").as_uri(), keys=keys, state_dir=state,
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: (state / "checkpoint.json").exists(), 60, "initial snapshot")
    finally:
        assert agent.stop() == 0, agent.log()
    return config, keys


def test_a_row_corrupted_after_the_load_is_reported_with_exit_4(pg_database: Any, tmp_path: Path) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE loyalty (id int PRIMARY KEY, balance numeric(10,2), tags text[])")
        conn.execute("INSERT INTO loyalty SELECT g, g * 1.5, ARRAY['a', g::text] FROM generate_series(1, 500) g")
    config, keys = _archive_of(pg_database.dsn, tmp_path)
    settings = load_settings(config)
    opts = RestoreOptions(target_dsn=pg_database.dsn, to_time="2999-01-01T00:00:00",
                          target_schema="r_ok", private_key=keys["archive.key"])
    report = run_restore(settings, opts)
    assert [(t.source, t.rows, t.ok) for t in report.tables] == [("public.loyalty", 500, True)]

    def corrupting(dsn: str) -> PgApplier:
        applier = PgApplier(dsn)
        applier.after_load_hook = lambda conn: conn.execute(
            "UPDATE r_bad.loyalty SET balance = 0 WHERE id = 42"
        )
        return applier

    bad = RestoreOptions(target_dsn=pg_database.dsn, to_time="2999-01-01T00:00:00",
                         target_schema="r_bad", private_key=keys["archive.key"])
    with pytest.raises(IntegrityError, match="r_bad.loyalty") as exc:
        run_restore(settings, bad, corrupting)
    assert exc.value.exit_code == 4


@pytest.mark.parametrize(
    ("type_name", "value", "text"),
    [
        ("bytea", "AP8=", "\\x00ff"),
        ("jsonb", {"a": [1, "b"]}, '{"a":[1,"b"]}'),  # re-parsed by the server: compact
        ("jsonb", [2**70, 0.5], f"[{2**70},0.5]"),  # beyond 64 bits: still exact
        ("json", {"a": [1, "b"]}, '{"a": [1, "b"]}'),  # kept verbatim: PostgreSQL's spacing
        # restore's fold keeps json values as their exact text (bytes): verbatim
        ("jsonb", b'{"p":19.90,"q":[1e400]}', '{"p":19.90,"q":[1e400]}'),
        ("json[]", [b'{"a":1.50}', None], '{"{\\"a\\": 1.50}",NULL}'),
        ("json", b'{"s":"a,b: \\"c\\"","n":[1e400]}', '{"s": "a,b: \\"c\\"", "n": [1e400]}'),
        ("date", "-0043-03-15", "0044-03-15 BC"),
        ("timestamp without time zone", "0000-01-01T00:00:00", "0001-01-01T00:00:00 BC"),
        ("text[]", ["a", None, 'q"\\'], '{"a",NULL,"q\\"\\\\"}'),
        ("integer[]", [[1, 2], [3, 4]], '{{"1","2"},{"3","4"}}'),
        ("double precision", "NaN", "NaN"),
        ("double precision", 0.1, "0.1"),
        ("boolean", True, "t"),
        ("numeric(12,2)", "10.50", "10.50"),
        ("text", None, None),
    ],
)
def test_json_values_become_postgres_text_input(type_name: str, value: Any, text: str | None) -> None:
    assert text_value(type_name)(value) == text


def test_every_text_form_is_accepted_by_the_server(pg_database: Any) -> None:
    cases = [
        ("bytea", "AP8="), ("jsonb", {"a": [1, "b"]}), ("date", "-0043-03-15"),
        ("text[]", ["a", None, 'q"\\']), ("integer[]", [[1, 2], [3, 4]]),
        ("interval", "P1Y2M3DT4H5M6.5S"), ("timestamp with time zone", "2024-01-01T10:00:00.5+00:00"),
    ]
    with psycopg.connect(pg_database.dsn) as conn:
        for type_name, value in cases:
            got = conn.execute(f"SELECT %s::{type_name}::text", (text_value(type_name)(value),)).fetchone()
            assert got is not None and got[0] is not None, (type_name, json.dumps(value))
