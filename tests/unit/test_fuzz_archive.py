"""Fuzzing: the archive reader fed random and mutated bytes.

Real objects are built with the real writer-side functions (records, zstd,
sealed stream, signed data-key announcement, signed catalog entry), then
mutated or replaced by random bytes. Reading them must give the records back
or raise one of the project's errors (IntegrityError/DecodeError, exit 4) —
never another exception, never hang (a hypothesis deadline per example).
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.archive import catalog
from agent.archive.access import verify_key_of
from agent.archive.records import (
    EventRecord,
    Record,
    SchemaRecord,
    TxBeginRecord,
    TxEndRecord,
    encode_record,
    read_records,
)
from agent.archive.segment import (
    MAGIC,
    VERSION,
    SegmentBuilder,
    read_header,
    read_segment_records,
    seal_object,
)
from agent.crypto.datakeys import DataKeyManager, DataKeyOpener
from agent.crypto.keyfiles import (
    generate_key_files,
    load_recipient_private,
    load_recipient_public,
    load_signing_key,
)
from agent.errors import ChangevaultError, IntegrityError
from agent.events import Column, ForeignKey, Index, Position, TableSchema

FUZZ = settings(max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
ARCHIVE_ID = "arch-1"
KEY = "segments/00000000000000000001.seg"
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
RECORDS: list[Record] = [
    TxBeginRecord(Position("0/16B3748", (0x16B3748,)), "741", T0),
    SchemaRecord(TableSchema(
        schema="Kunden Übersicht", table='order"s',
        columns=(Column("id", "bigint", False), Column("a.b", "text", True)),
        primary_key=("id",), version=2,
        foreign_keys=(ForeignKey("fk", ("id",), "public", "c", ("id",), "CASCADE"),),
        indexes=(Index("ix", ("a.b",), True),),
    )),
    EventRecord(b'{"id":"postgres:shop:0/16B3748:0","op":"c"}'),
    EventRecord(b"x" * 300),
    TxEndRecord(Position("0/16B3748", (0x16B3748,)), 2),
]
PLAINTEXT = b"".join(encode_record(r) for r in RECORDS)


class Material:
    """One real sealed segment and one real signed catalog entry, plus their reader keys."""

    def __init__(self, directory: Path) -> None:
        keys = generate_key_files(directory)
        signer = load_signing_key(keys["signing.key"])
        vk = verify_key_of(signer)
        self.trusted = {vk.key_id: vk}
        self.opener = DataKeyOpener([load_recipient_private(keys["archive.key"])], self.trusted)
        manager = DataKeyManager([load_recipient_public(keys["archive.pub"])], signer, "agent-1")
        self.announcement = manager.current().announcement
        builder = SegmentBuilder()
        for rec in RECORDS:
            builder.add(rec)
        self.segment = seal_object(manager.current(), ARCHIVE_ID, KEY, {"records": len(RECORDS)},
                                   [builder.finish()])
        entry = catalog.CatalogEntry(
            seq=1, kind=catalog.SEGMENT, archive_id=ARCHIVE_ID, prev_hash="ab" * 32,
            created=T0.isoformat(), agent_id="agent-1", retention_horizon=None,
            body={"key": KEY, "tables": ['Kunden Übersicht.order"s']},
        )
        self.entry = catalog.seal_entry(entry, signer)

    def read(self, data: bytes) -> list[Any]:
        return list(read_segment_records(data, self.opener, ARCHIVE_ID, KEY))


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material(tmp_path_factory.mktemp("keys"))


def test_the_real_objects_read_back(material: Material) -> None:
    assert material.read(material.segment) == RECORDS
    entry = catalog.open_entry(material.entry, material.trusted, "catalog/1")
    assert entry.body["tables"] == ['Kunden Übersicht.order"s']
    assert list(read_records(io.BytesIO(PLAINTEXT))) == RECORDS


def mutate(draw: st.DrawFn, data: bytes, max_actions: int = 3) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, max_actions))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and raw:
            raw[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, ord("["), ord("{"), ord('"')]))
        elif action == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 16))]
        else:
            del raw[pos:]
    return bytes(raw)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    return mutate(draw, data)


def only_project_errors(fn: Any, *args: Any) -> None:
    with contextlib.suppress(ChangevaultError):
        fn(*args)


# ----------------------------------------------------------------- segments


@FUZZ
@given(st.data())
def test_mutated_segments(material: Material, data: st.DataObject) -> None:
    changed = data.draw(mutated(material.segment))
    if changed == material.segment:
        return
    with pytest.raises(ChangevaultError):
        material.read(changed)  # every byte is authenticated: any change is refused


def test_trailing_bytes_after_the_final_chunk(material: Material) -> None:
    with pytest.raises(IntegrityError):
        material.read(material.segment + b"\x00")


@FUZZ
@given(st.binary(max_size=400))
def test_random_segments(material: Material, data: bytes) -> None:
    with pytest.raises(ChangevaultError):
        material.read(data)


def header_with(announcement: bytes, meta: bytes) -> bytes:
    return (MAGIC + bytes([VERSION]) + struct.pack(">I", len(announcement)) + announcement
            + struct.pack(">I", len(meta)) + meta)


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_random_header_fields(announcement: bytes, meta: bytes) -> None:
    only_project_errors(read_header, io.BytesIO(header_with(announcement, meta)), KEY)


@pytest.mark.parametrize("meta", [b"[" * 200_000, b'{"a":' * 100_000, b"\xff\xfe", b"[]", b"1e999999"])
def test_hostile_object_metadata(meta: bytes) -> None:
    # Deep nesting makes json.loads recurse: it must still be a one-line IntegrityError.
    with pytest.raises(IntegrityError):
        read_header(io.BytesIO(header_with(b"x", meta)), KEY)


@FUZZ
@given(st.data())
def test_mutated_announcements(material: Material, data: st.DataObject) -> None:
    announcement = data.draw(mutated(material.announcement))
    if announcement == material.announcement:
        return
    with pytest.raises(ChangevaultError):
        material.opener.unwrap(announcement)


# ---------------------------------------------------------- plaintext records


@FUZZ
@given(st.data())
def test_mutated_plaintext_records(data: st.DataObject) -> None:
    changed = data.draw(mutated(PLAINTEXT))
    only_project_errors(lambda: list(read_records(io.BytesIO(changed))))


@FUZZ
@given(st.binary(max_size=300))
def test_random_plaintext(data: bytes) -> None:
    only_project_errors(lambda: list(read_records(io.BytesIO(data))))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _like_real(kind: int) -> st.SearchStrategy[Any]:
    """Real record documents with one field replaced by any JSON value."""
    real = json.loads(encode_record(RECORDS[{1: 0, 3: 4, 4: 1}[kind]])[5:])
    return st.sampled_from(sorted(real)).flatmap(
        lambda field: _json.map(lambda value: {**real, field: value}))


@FUZZ
@given(st.sampled_from([1, 3, 4]).flatmap(lambda k: st.tuples(st.just(k), _json | _like_real(k))))
def test_records_with_any_json_body(kind_doc: tuple[int, Any]) -> None:
    kind, doc = kind_doc
    body = json.dumps(doc).encode()
    only_project_errors(lambda: list(read_records(io.BytesIO(struct.pack(">BI", kind, len(body)) + body))))


@pytest.mark.parametrize(("kind", "body"), [
    (1, b"[" * 200_000),
    (1, b'{"position": {"text": "x", "sort_key": [Infinity]}, "txid": "1", "commit_ts": "2026"}'),
    (1, b'{"position": {"text": "x", "sort_key": [1]}, "txid": "1", "commit_ts": "not a time"}'),
    (3, b'{"position": "0/1", "events": 1}'),
    (4, b'{"schema": "s", "table": "t", "columns": [[1]], "primary_key": []}'),
    (9, b"{}"),
])
def test_hostile_record_bodies(kind: int, body: bytes) -> None:
    with pytest.raises(ChangevaultError):
        list(read_records(io.BytesIO(struct.pack(">BI", kind, len(body)) + body)))


def test_a_decompression_bomb_is_read_in_bounded_pieces() -> None:
    # A record header announcing more bytes than exist: refused, not allocated.
    bomb = zstandard.ZstdCompressor().compress(struct.pack(">BI", 2, 200 * 1024 * 1024))
    plain = zstandard.ZstdDecompressor().decompress(bomb)
    with pytest.raises(ChangevaultError):
        list(read_records(io.BytesIO(plain)))


# -------------------------------------------------------------- catalog entries


@FUZZ
@given(st.data())
def test_mutated_catalog_entries(material: Material, data: st.DataObject) -> None:
    raw = data.draw(mutated(material.entry))
    try:
        entry = catalog.open_entry(raw, material.trusted, "catalog/1")
    except ChangevaultError:
        return
    # Only a change the signature does not cover (JSON whitespace/escapes) may pass,
    # and then the entry reads as the original.
    assert entry.body["key"] == KEY


@FUZZ
@given(_json)
def test_catalog_entries_of_any_json(doc: Any) -> None:
    only_project_errors(catalog.open_entry, json.dumps(doc).encode(), material_trusted(), "catalog/1")


@pytest.mark.parametrize("raw", [
    b'{"entry": {"format": 1}, "key_id": "k", "sig": "!!"}',
    b'{"entry": {"format": 1}, "key_id": "k", "sig": ""}',
    b"\xff\xfe",
])
def test_hostile_catalog_entries(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        catalog.open_entry(raw, material_trusted(), "catalog/1")


# Found by fuzzing: an "entry" that is not an object, and absurdly nested
# JSON, must be one-line integrity errors too, not exit 1.
@pytest.mark.parametrize("raw", [
    b'{"entry": [], "key_id": "k", "sig": ""}',
    b'{"entry": "x", "key_id": "k", "sig": ""}',
    b"[" * 200_000,
])
def test_malformed_catalog_entries_are_integrity_errors(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        catalog.open_entry(raw, material_trusted(), "catalog/1")


def material_trusted() -> dict[str, Any]:
    return {}
