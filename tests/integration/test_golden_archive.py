"""The committed golden archive (format v1) stays readable: verify, events, restore — exactly.

tests/golden/v1/ was made once by tests/golden/make_golden.py and is never
regenerated here: if a change to the code makes these bytes unreadable or
reads them differently, that change breaks every archive users already keep
(docs/compatibility.md). Each test works on a temporary copy.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.archive import segment
from agent.errors import IntegrityError
from tests.e2e.agent_process import cli
from tests.golden.make_golden import table_text

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "v1"
MANIFEST: dict[str, Any] = json.loads((GOLDEN / "golden.json").read_text())


def golden_copy(tmp_path: Path) -> Path:
    """A copy of the archive and keys, and a config for them; returns the config path."""
    shutil.copytree(GOLDEN / "archive", tmp_path / "archive")
    keys = tmp_path / "keys"
    shutil.copytree(GOLDEN / "keys", keys)
    for private in ("archive.key", "signing.key", "keyhash.key"):
        (keys / private).chmod(0o600)
    src = MANIFEST["source"]
    doc = {
        # The source is never contacted by verify, events or restore; its
        # database and slot name the archive (the genesis entry's source id).
        "source": {"type": src["type"], "dsn": f"postgresql://golden@127.0.0.1:1/{src['database']}",
                   "slot": src["slot"], "publication": src["publication"]},
        "archive": {"url": (tmp_path / "archive").as_uri()},
        "encryption": {
            "recipients": [str(keys / "archive.pub")],
            "signing_key_file": str(keys / "signing.key"),
            "trusted_signing_keys": [str(keys / "signing.pub")],
            "keyhash_key_file": str(keys / "keyhash.key"),
            "private_key_file": str(keys / "archive.key"),
        },
        "state_dir": str(tmp_path / "state"),
    }
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def test_golden_archive_is_small_and_complete() -> None:
    files = [p for p in GOLDEN.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 200_000
    assert any(p.suffix == ".seg" and "segments" in p.parts for p in files)
    assert len([p for p in files if "snapshots" in p.parts]) >= 2


def test_verify_and_verify_decrypt(tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    proc = cli(["verify", "-c", str(config)])
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout and "2 snapshots" in proc.stdout, proc.stdout
    proc = cli(["verify", "-c", str(config), "--decrypt",
                "--private-key", str(tmp_path / "keys" / "archive.key")])
    assert proc.returncode == 0, proc.stderr
    assert "objects decrypted" in proc.stdout


def test_events_match_the_committed_history(tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    proc = cli(["events", "-c", str(config), "--private-key", str(tmp_path / "keys" / "archive.key")])
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    want = [json.loads(line) for line in (GOLDEN / "events.jsonl").read_text().splitlines()]
    assert got == want
    assert {e["op"] for e in want} == {"r", "c", "u", "d"}


@pytest.mark.parametrize("point", ["mid", "end"])
def test_restore_reproduces_the_recorded_tables(point: str, pg_database: Any, tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    expected = MANIFEST["restore"][point]
    schema = f"golden_{point}"
    proc = cli(["restore", "-c", str(config), "--to-position", expected["position"],
                "--target-dsn", pg_database.dsn, "--target-schema", schema,
                "--private-key", str(tmp_path / "keys" / "archive.key")], timeout=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for table in MANIFEST["tables"]:
        assert table_text(pg_database.dsn, schema, table) == expected["tables"][table], table


def test_unknown_future_versions_are_refused_with_exit_4(tmp_path: Path) -> None:
    config = golden_copy(tmp_path)
    # A catalog entry of a future format: refused by name, before its signature is judged.
    first = tmp_path / "archive" / "catalog" / "00000000000000000000.json"
    doc = json.loads(first.read_text())
    doc["entry"]["format"] = 2
    first.write_text(json.dumps(doc))
    proc = cli(["verify", "-c", str(config)])
    assert proc.returncode == 4, proc.stderr
    assert "format 2" in proc.stderr, proc.stderr
    # A sealed object of a future version: the header reader names the version.
    seg = next((GOLDEN / "archive" / "segments").rglob("*.seg")).read_bytes()
    bumped = seg[: len(segment.MAGIC)] + bytes([segment.VERSION + 1]) + seg[len(segment.MAGIC) + 1:]

    with pytest.raises(IntegrityError, match=f"version {segment.VERSION + 1}"):
        segment.read_header(io.BytesIO(bumped), "golden segment")
