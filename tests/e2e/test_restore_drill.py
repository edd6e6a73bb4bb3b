"""The scripted monthly restore drill runs green on a real archive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.integration.test_golden_archive import MANIFEST, golden_copy

DRILL = Path(__file__).resolve().parents[2] / "config" / "restore-drill.sh"


def test_restore_drill_verifies_decrypts_and_restores(pg_database: Any, tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(DRILL), str(config), pg_database.dsn, str(tmp_path / "keys" / "archive.key")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "drill: ok" in proc.stdout
    schema = proc.stdout.split("scratch schema ")[1].split()[0]
    with psycopg.connect(pg_database.dsn) as conn:
        for table in MANIFEST["tables"]:
            name = table.split(".")[-1]
            count = conn.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()
            assert count is not None
            assert count[0] == len(MANIFEST["restore"]["end"]["tables"][table]["rows"]), table


def test_restore_drill_fails_with_the_wrong_key(pg_database: Any, tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    from agent.crypto.keyfiles import generate_key_files

    other = generate_key_files(tmp_path / "other")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(DRILL), str(config), pg_database.dsn, str(other["archive.key"])],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "drill: ok" not in proc.stdout
