"""Restore arguments through the CLI: a time before the oldest snapshot, unknown
tables and columns, a target schema that exists and is not empty — exit 2, one
line, nothing written. A time later than the archive's end restores to the end
and says so in the report."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from tests.e2e.agent_process import AgentProcess, cli, make_keys, write_config
from tests.e2e.fault_tools import lsn_int, one_error_line, wait_caught_up
from tests.servers.postgres import PostgresServer

pytestmark = pytest.mark.xdist_group("restore_args")


@dataclass
class Archived:
    config: Path
    keys: dict[str, Path]
    dsn: str
    end_position: str


@pytest.fixture(scope="module")
def archived(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    root = tmp_path_factory.mktemp("restore-args")
    name = f"cv_rargs_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigint PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY,"
                     " customer_id bigint REFERENCES customers (id), total int)")
        conn.execute("INSERT INTO customers VALUES (1, 'ann'), (2, 'bob')")
    keys = make_keys(root / "keys")
    config = write_config(
        root / "cv.yaml",
        source={"type": "postgres", "dsn": dsn, "slot": "cv_rargs", "publication": "cv_rargs"},
        archive_url=(root / "archive").as_uri(), keys=keys, state_dir=root / "state",
    )
    agent = AgentProcess(config, root / "agent.log")
    try:
        wait_caught_up(dsn, root / "state", 60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (10, 1, 5), (11, 2, 7)")
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        wait_caught_up(dsn, root / "state", 60)
    finally:
        assert agent.stop() == 0, agent.log()[-2000:]
    assert end is not None
    yield Archived(config, keys, dsn, str(end[0]))
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def restore(a: Archived, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(["restore", "-c", str(a.config), "--target-dsn", a.dsn, "--target-schema", schema,
                "--private-key", str(a.keys["archive.key"]), *args], timeout=120)


def schema_exists(dsn: str, schema: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


CASES = {
    "before the oldest snapshot": (["--to", "2001-01-01T00:00:00Z"], "oldest"),
    "unknown table": (["--to", "2999-01-01T00:00:00Z", "--tables", "public.nope"], "public.nope"),
    "unknown entity table": (["--to", "2999-01-01T00:00:00Z", "--entity", "public.nope.id=1"], "nope"),
    "unknown entity column": (["--to", "2999-01-01T00:00:00Z", "--entity", "public.customers.nope=1"], "nope"),
    "entity value with SQL": (["--to", "2999-01-01T00:00:00Z", "--entity", "customers.id=1;DROP TABLE x"],
                              "customers.id"),
    "malformed time": (["--to", "yesterday"], "--to"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_restore_arguments_are_exit_2_and_write_nothing(case: str, archived: Archived) -> None:
    args, needle = CASES[case]
    schema = f"r_{uuid.uuid4().hex[:8]}"
    line = one_error_line(restore(archived, schema, *args), 2)
    assert needle in line, line
    assert not schema_exists(archived.dsn, schema), f"{case}: schema {schema} was created"


def test_existing_non_empty_target_schema_is_exit_2_and_untouched(archived: Archived) -> None:
    schema = f"r_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(archived.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".customers (id bigint PRIMARY KEY, name text)')
        conn.execute(f'INSERT INTO "{schema}".customers VALUES (99, %s)', ("keep me",))
    line = one_error_line(restore(archived, schema, "--to", "2999-01-01T00:00:00Z"), 2)
    assert schema in line and "customers" in line, line
    with psycopg.connect(archived.dsn, autocommit=True) as conn:
        rows = conn.execute(f'SELECT id, name FROM "{schema}".customers').fetchall()
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    assert rows == [(99, "keep me")]
    assert tables == [("customers",)], "restore created tables beside the refused one"


def test_time_after_the_archive_end_restores_to_the_end(archived: Archived) -> None:
    schema = f"r_{uuid.uuid4().hex[:8]}"
    proc = restore(archived, schema, "--to", "2999-01-01T00:00:00Z")
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(archived.dsn, autocommit=True) as conn:
        got = conn.execute(f'SELECT id, customer_id, total FROM "{schema}".orders ORDER BY id').fetchall()
    assert got == [(10, 1, 5), (11, 2, 7)]
    # The report names where it stopped: the archive's last transaction.
    stopped = re.search(r"stopped at position (\S+) \(commit time ([^,]+),", proc.stdout)
    assert stopped is not None, proc.stdout
    assert lsn_int(stopped.group(1)) <= lsn_int(archived.end_position)
    assert datetime.fromisoformat(stopped.group(2)) < datetime.now(UTC)
