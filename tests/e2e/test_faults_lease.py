"""Two agents on one source from two state directories (two hosts) and one
archive: the second refuses on the archive lease (exit 3), never both writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

from agent.archive import catalog
from agent.crypto.keyfiles import load_verify_keys
from connectors.storage.local import LocalObjectStore
from tests.e2e.agent_process import AgentProcess, make_keys, wait_for, write_config
from tests.e2e.fault_tools import checkpoint_lsn, create_schema, drain_and_stop


def test_second_agent_on_the_same_archive_refuses(pg_database: Any, tmp_path: Path) -> None:
    create_schema(pg_database.dsn)
    keys = make_keys(tmp_path / "keys")
    archive = tmp_path / "archive"
    first = write_config(
        tmp_path / "one.yaml",
        source={"type": "postgres", "dsn": pg_database.dsn, "slot": "cv_lease", "publication": "cv_lease"},
        archive_url=archive.as_uri(), keys=keys, state_dir=tmp_path / "state-one",
    )
    doc = yaml.safe_load(first.read_text())
    doc["state_dir"] = str(tmp_path / "state-two")  # another host: no shared local lock
    second = tmp_path / "two.yaml"
    second.write_text(yaml.safe_dump(doc))

    one = AgentProcess(first, tmp_path / "one.log")
    try:
        wait_for(lambda: checkpoint_lsn(tmp_path / "state-one") is not None, 60, "first agent streaming")
        two = AgentProcess(second, tmp_path / "two.log")
        code = two.proc.wait(60)
        two.stop()
        assert code == 3, two.log()
        # Log lines aside (the metrics server starts first), one error line.
        errors = [ln for ln in two.log().splitlines() if ln.startswith("changevault:")]
        assert len(errors) == 1 and "leased to agent" in errors[0], two.log()
        assert "Traceback" not in two.log()
        assert one.alive(), one.log()
        with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO ledger VALUES (1, 0)")
        code = drain_and_stop(one, pg_database.dsn, tmp_path / "state-one")
    finally:
        if one.alive():
            one.kill()
    assert code == 0, one.log()

    # Every catalog entry was written by the first agent.
    own_id = (tmp_path / "state-one" / "agent-id").read_text().strip()
    trusted = load_verify_keys([keys["signing.pub"]])
    writers = {e.agent_id for e in catalog.read_chain(LocalObjectStore(archive), trusted)}
    assert writers == {own_id}
