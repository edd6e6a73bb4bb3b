"""Hostile archive and Kafka input through the real CLI: every tampering makes
`events` / `verify` exit 4 with one line on stderr, no traceback, and print
nothing from the bad part or after it."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from agent.archive.access import data_key_opener, open_store, trusted_keys
from agent.archive.reader import ArchiveReader, segment_entries
from agent.archive.records import EventRecord
from agent.archive.segment import read_segment_records
from agent.settings import load_settings
from tests.e2e.agent_process import AgentProcess, cli, make_keys, write_config
from tests.e2e.fault_tools import wait_caught_up
from tests.servers.postgres import PostgresServer
from tests.servers.tansu import TansuBroker

MARKER = "hostile-marker"
ROWS = 6
# One worker builds the archives once for the whole module.
pytestmark = pytest.mark.xdist_group("hostile_archive")


@dataclass
class Built:
    config: Path  # archive A (with Kafka)
    archive: Path
    other_archive: Path  # archive B: same source, another archive id
    keys: dict[str, Path]
    prefix: str
    bootstrap: str
    segment_ids: list[tuple[str, set[str]]]  # (object key, event ids) of A, catalog order


def _segment_ids(config: Path, keys: dict[str, Path]) -> list[tuple[str, set[str]]]:
    settings = load_settings(config)
    reader = ArchiveReader(open_store(settings), trusted_keys(settings),
                           data_key_opener(settings, keys["archive.key"]))
    assert reader.opener is not None
    out = []
    for entry in segment_entries(reader.entries()):
        key = entry.body["object"]
        data = reader.fetch(key, entry.body["digest"])
        ids = {json.loads(r.envelope)["id"] for r in read_segment_records(data, reader.opener, reader.archive_id, key)
               if isinstance(r, EventRecord)}
        out.append((key, ids))
    return out


@pytest.fixture(scope="module")
def built(pg_server: PostgresServer, kafka_broker: TansuBroker,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    root = tmp_path_factory.mktemp("hostile")
    name = f"cv_hostile_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, note text)")
    keys = make_keys(root / "keys")
    prefix = f"cv_hostile_{uuid.uuid4().hex[:8]}"
    kafka = {"bootstrap_servers": [kafka_broker.bootstrap], "topic_prefix": prefix,
             "replication_factor": 1, "min_insync_replicas": 1}
    configs = []
    for tag, with_kafka in (("a", True), ("b", False)):
        configs.append(write_config(
            root / f"{tag}.yaml",
            source={"type": "postgres", "dsn": dsn, "slot": f"cv_h{tag}", "publication": f"cv_h{tag}"},
            archive_url=(root / f"archive-{tag}").as_uri(), keys=keys,
            state_dir=root / f"state-{tag}", kafka=kafka if with_kafka else None))
    agents = [AgentProcess(c, root / f"agent-{i}.log") for i, c in enumerate(configs)]
    try:
        for i in range(2):
            wait_caught_up(dsn, root / f"state-{'ab'[i]}", 60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(1, ROWS + 1):
                conn.execute("INSERT INTO items VALUES (%s, %s)", (i, f"{MARKER}-{i}"))
                # Durable (its segment closed) before the next: one segment each.
                wait_caught_up(dsn, root / "state-a", 60)
        for i in range(2):
            wait_caught_up(dsn, root / f"state-{'ab'[i]}", 60)
    finally:
        codes = [a.stop() for a in agents]
    assert codes == [0, 0], [a.log()[-2000:] for a in agents]
    segs = _segment_ids(configs[0], keys)
    assert len(segs) >= 3, "the fixture needs several segments"
    yield Built(configs[0], root / "archive-a", root / "archive-b", keys, prefix,
                kafka_broker.bootstrap, segs)
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Case:
    config: Path
    archive: Path
    keys: dict[str, Path]


@pytest.fixture
def case(built: Built, tmp_path: Path) -> Case:
    """A private copy of archive A and a config pointing at it."""
    archive = tmp_path / "archive"
    shutil.copytree(built.archive, archive)
    doc = yaml.safe_load(built.config.read_text())
    doc["archive"]["url"] = archive.as_uri()
    doc["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump(doc))
    return Case(config, archive, built.keys)


def _events(case: Case, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    return cli(["events", "-c", str(case.config), "--private-key", str(key or case.keys["archive.key"])])


def _verify(case: Case, decrypt: bool = False, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--decrypt", "--private-key", str(key or case.keys["archive.key"])] if decrypt else []
    return cli(["verify", "-c", str(case.config), *extra])


def assert_refused(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 4, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def printed_ids(proc: subprocess.CompletedProcess[str]) -> set[str]:
    return {json.loads(line)["id"] for line in proc.stdout.splitlines() if line.strip()}


def assert_nothing_from(built: Built, proc: subprocess.CompletedProcess[str], bad: int) -> None:
    """No event of the bad segment or of any later one reached stdout."""
    later = set().union(*(ids for _k, ids in built.segment_ids[bad:]))
    leaked = printed_ids(proc) & later
    assert not leaked, f"printed events from the bad part: {sorted(leaked)[:3]}"


def _segment_path(case: Case, built: Built, index: int) -> Path:
    return case.archive / built.segment_ids[index][0]


def _catalog(case: Case) -> list[Path]:
    return sorted((case.archive / "catalog").glob("*.json"))


def test_intact_archive_reads(built: Built, case: Case) -> None:
    proc = _events(case)
    assert proc.returncode == 0, proc.stderr
    assert sum(MARKER in line for line in proc.stdout.splitlines()) == ROWS
    assert _verify(case, decrypt=True).returncode == 0


def test_flipped_byte(built: Built, case: Case) -> None:
    bad = len(built.segment_ids) // 2
    path = _segment_path(case, built, bad)
    data = bytearray(path.read_bytes())
    data[len(data) - 20] ^= 0x01
    path.write_bytes(bytes(data))
    proc = _events(case)
    assert_refused(proc)
    assert_nothing_from(built, proc, bad)
    assert_refused(_verify(case))


def test_truncated_segment(built: Built, case: Case) -> None:
    bad = len(built.segment_ids) // 2
    path = _segment_path(case, built, bad)
    path.write_bytes(path.read_bytes()[:-17])
    proc = _events(case)
    assert_refused(proc)
    assert_nothing_from(built, proc, bad)
    assert_refused(_verify(case))


def test_removed_segment(built: Built, case: Case) -> None:
    bad = len(built.segment_ids) // 2
    _segment_path(case, built, bad).unlink()
    proc = _events(case)
    assert_refused(proc)
    assert_nothing_from(built, proc, bad)
    assert_refused(_verify(case))


def test_segment_from_another_archive(built: Built, case: Case) -> None:
    bad = len(built.segment_ids) // 2
    foreign = sorted((built.other_archive / "segments").rglob("*.seg"))[-1]
    shutil.copyfile(foreign, _segment_path(case, built, bad))
    proc = _events(case)
    assert_refused(proc)
    assert_nothing_from(built, proc, bad)
    assert_refused(_verify(case))


def test_reordered_catalog_entries(built: Built, case: Case) -> None:
    entries = _catalog(case)
    a, b = entries[-3], entries[-2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    assert_refused(_events(case))
    assert_refused(_verify(case))


def test_replayed_catalog_entry(built: Built, case: Case) -> None:
    entries = _catalog(case)
    nxt = int(entries[-1].stem) + 1
    shutil.copyfile(entries[-2], entries[-1].with_name(f"{nxt:020d}.json"))
    assert_refused(_events(case))
    assert_refused(_verify(case))


def test_hand_edited_catalog_entry(built: Built, case: Case) -> None:
    # Point a segment entry at a later segment, keeping the JSON valid.
    entries = _catalog(case)
    target = next(p for p in entries if json.loads(p.read_bytes())["entry"]["kind"] == "segment")
    doc = json.loads(target.read_bytes())
    doc["entry"]["body"]["events"] = doc["entry"]["body"]["events"] + 1
    target.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    proc = _events(case)
    assert_refused(proc)
    assert MARKER not in proc.stdout
    assert_refused(_verify(case))


def test_wrong_private_key(built: Built, case: Case, tmp_path: Path) -> None:
    other = make_keys(tmp_path / "other-keys")
    proc = _events(case, other["archive.key"])
    assert_refused(proc)
    assert proc.stdout == ""
    assert_refused(_verify(case, decrypt=True, key=other["archive.key"]))


def test_untrusted_signing_key(built: Built, case: Case, tmp_path: Path) -> None:
    other = make_keys(tmp_path / "other-keys")
    doc = yaml.safe_load(case.config.read_text())
    doc["encryption"]["trusted_signing_keys"] = [str(other["signing.pub"])]
    case.config.write_text(yaml.safe_dump(doc))
    proc = _events(case)
    assert_refused(proc)
    assert proc.stdout == ""
    assert_refused(_verify(case))


# ------------------------------------------------------------------ Kafka


def _forge(built: Built, tmp_path: Path, signer_mode: str) -> Path:
    """Topics under a fresh prefix holding one forged event and its transaction
    record; returns a config reading them."""
    from kafka import KafkaProducer

    from agent.crypto import keyfiles
    from agent.crypto.datakeys import DataKeyAnnouncement, DataKeyManager
    from agent.crypto.messages import MessageSealer
    from connectors.kafka.admin import TopicAdmin, TopicSpec
    from connectors.kafka.topic_names import table_topic, transactions_topic
    from tests.e2e.fault_tools import kafka_settings

    prefix = f"cv_forged_{uuid.uuid4().hex[:8]}"
    settings = load_settings(built.config)
    database = settings.source.database
    attacker = make_keys(tmp_path / "attacker")
    recipients = [keyfiles.load_recipient_public(built.keys["archive.pub"])]  # all they hold
    manager = DataKeyManager(recipients, keyfiles.load_signing_key(attacker["signing.key"]), "forger")
    if signer_mode == "claims-trusted":
        # Claim the agent's signing key id; the signature cannot be made without it.
        real_id = keyfiles.load_signing_key(built.keys["signing.key"]).key_id
        data_key = manager.current()
        ann = DataKeyAnnouncement.from_bytes(data_key.announcement)
        forged = DataKeyAnnouncement(ann.key_id, ann.agent_id, ann.created_us, ann.wrapped,
                                     real_id, ann.signature)
        object.__setattr__(data_key, "announcement", forged.to_bytes())
    sealer = MessageSealer(manager)
    topic = table_topic(prefix, database, "public", "items")
    tx_topic = transactions_topic(prefix)
    ks = kafka_settings(built.bootstrap, prefix)
    admin = TopicAdmin(ks)
    try:
        admin.ensure_topics([TopicSpec(topic, True), TopicSpec(tx_topic, False)])
    finally:
        admin.close()
    position = "0/FFFFFF0"
    event: dict[str, Any] = {"id": f"postgres:{database}:{position}:0", "op": "c",
             "source": {"connector": "postgres", "database": database, "schema": "public",
                        "table": "items", "position": position, "txid": "1", "seq": 0,
                        "commit_ts": "2026-01-01T00:00:00+00:00", "schema_version": 1},
             "key": {"id": 666}, "before": None, "after": {"id": 666, "note": "FORGED"},
             "unchanged": []}
    tx = {"txid": "1", "position": position, "commit_ts": "2026-01-01T00:00:00+00:00",
          "events": {topic: 1}}
    producer = KafkaProducer(bootstrap_servers=[built.bootstrap])
    key = b"k" * 32
    producer.send(topic, key=key, value=sealer.seal(json.dumps(event).encode(), topic, key))
    producer.send(tx_topic, value=sealer.seal(json.dumps(tx).encode(), tx_topic, b""))
    producer.flush(30)
    producer.close()
    doc = yaml.safe_load(built.config.read_text())
    doc["kafka"]["topic_prefix"] = prefix
    doc["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "forged.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def test_genuine_kafka_history_reads(built: Built) -> None:
    proc = cli(["events", "-c", str(built.config), "--from-kafka",
                "--private-key", str(built.keys["archive.key"])])
    assert proc.returncode == 0, proc.stderr
    assert sum(MARKER in line for line in proc.stdout.splitlines()) == ROWS


@pytest.mark.parametrize("signer_mode", ["untrusted-key", "claims-trusted"])
def test_forged_kafka_message_refused(built: Built, tmp_path: Path, signer_mode: str) -> None:
    config = _forge(built, tmp_path, signer_mode)
    proc = cli(["events", "-c", str(config), "--from-kafka",
                "--private-key", str(built.keys["archive.key"])])
    assert_refused(proc)
    assert "FORGED" not in proc.stdout


def test_refusals_do_not_need_keys_of_the_attacker(built: Built, tmp_path: Path) -> None:
    """Sanity of the forgery itself: with the attacker's signing.pub trusted,
    the forged message opens (so the refusals above are the signature check)."""
    config = _forge(built, tmp_path, "untrusted-key")
    doc: dict[str, Any] = yaml.safe_load(config.read_text())
    doc["encryption"]["trusted_signing_keys"] = [str(tmp_path / "attacker" / "signing.pub")]
    config.write_text(yaml.safe_dump(doc))
    proc = cli(["events", "-c", str(config), "--from-kafka",
                "--private-key", str(built.keys["archive.key"])])
    assert proc.returncode == 0, proc.stderr
    assert "FORGED" in proc.stdout
