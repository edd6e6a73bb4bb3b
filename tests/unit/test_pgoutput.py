"""The pgoutput decoder on bytes recorded from PostgreSQL 15 (see data/pgoutput/record.py)."""

from __future__ import annotations

import json
import struct
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from agent.errors import DecodeError
from connectors.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    PgoutputDecoder,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfoMessage,
    Update,
    decode_message,
)

DATA = Path(__file__).parent / "data" / "pgoutput"


def raw_messages(name: str) -> list[bytes]:
    with (DATA / name).open() as fh:
        return [bytes.fromhex(json.loads(line)["data"]) for line in fh]


def decode_all(name: str, proto: int = 2) -> list[Message]:
    decoder = PgoutputDecoder(proto)
    return [decoder.decode(raw) for raw in raw_messages(name)]


T = TypeVar("T")


def of_type(messages: list[Message], kind: type[T]) -> list[T]:
    return [m for m in messages if isinstance(m, kind)]


@pytest.fixture(scope="module")
def proto1() -> list[Message]:
    return decode_all("proto1.jsonl", proto=1)


@pytest.fixture(scope="module")
def proto2() -> list[Message]:
    return decode_all("proto2_stream.jsonl")


def test_proto1_message_counts(proto1: list[Message]) -> None:
    counts = Counter(type(m).__name__ for m in proto1)
    assert counts == {
        "Begin": 14, "Commit": 14, "TypeInfoMessage": 4, "Relation": 9, "Insert": 1510,
        "Update": 3, "Delete": 2, "Truncate": 1, "LogicalMessage": 2, "Origin": 1,
    }  # fmt: skip


def test_begin_commit_pair_up(proto1: list[Message]) -> None:
    begins, commits = of_type(proto1, Begin), of_type(proto1, Commit)
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn
        assert commit.end_lsn > commit.commit_lsn
        assert begin.commit_ts == commit.commit_ts
        assert begin.commit_ts.tzinfo is UTC
        assert abs(begin.commit_ts - datetime.now(UTC)).days < 3650
        assert commit.flags == 0
    xids = [b.xid for b in begins]
    assert xids == sorted(xids) and len(set(xids)) == len(xids)


def test_relation_and_type_messages(proto1: list[Message]) -> None:
    types = of_type(proto1, TypeInfoMessage)
    assert (types[0].namespace, types[0].name) == ("public", "mood")
    # A domain's Type message names its base type (pg_catalog is sent as "").
    assert (types[1].namespace, types[1].name) == ("", "int4")
    t_default = next(r for r in of_type(proto1, Relation) if r.name == "t_default")
    assert t_default.namespace == "public" and t_default.replica_identity == "d"
    assert t_default.xid is None
    cols = [(c.name, c.type_oid, c.typmod, c.is_key) for c in t_default.columns]
    assert cols == [
        ("id", 23, -1, True),
        ("name", 1043, 44, False),
        ("big", 25, -1, False),
        ("amount", 1700, (12 << 16 | 2) + 4, False),
        ("at", 1184, -1, False),
        ("feeling", types[0].oid, -1, False),
        ("score", types[1].oid, -1, False),
        ("tags", 1009, -1, False),
    ]
    t_full = next(r for r in of_type(proto1, Relation) if r.name == "t_full")
    assert t_full.replica_identity == "f"
    assert all(c.is_key for c in t_full.columns)  # FULL flags every column


def test_insert_values_stay_bytes(proto1: list[Message]) -> None:
    first, second, third = of_type(proto1, Insert)[:3]
    assert first.new[:2] == (b"1", b"one")
    assert isinstance(first.new[2], bytes) and len(first.new[2]) == 6400
    assert first.new[3:] == (
        b"12.50", b"2024-02-29 12:34:56.789+00", b"happy", b"7", b'{a,"b c",NULL,"d\\"e"}',
    )  # fmt: skip
    assert second.new == (b"2",) + (None,) * 7
    assert third.new[-1] == b"{}" and third.new[4] == b"-infinity"


def test_updates_and_deletes(proto1: list[Message]) -> None:
    toast, key_change, full = of_type(proto1, Update)
    assert toast.old_kind is None and toast.old is None
    assert toast.new[:2] == (b"1", b"uno") and toast.new[2] is UNCHANGED_TOAST
    assert key_change.old_kind == "K"
    assert key_change.old == (b"2",) + (None,) * 7
    assert key_change.new == (b"20",) + (None,) * 7
    assert full.old_kind == "O"
    assert full.old is not None and full.old[:2] == (b"1", b"first") and len(full.old[2]) == 6400
    assert full.new[:2] == (b"1", b"second") and full.new[2] is UNCHANGED_TOAST
    key_delete, full_delete = of_type(proto1, Delete)
    assert key_delete.old_kind == "K" and key_delete.old == (b"3",) + (None,) * 7
    assert full_delete.old_kind == "O" and full_delete.old[:2] == (b"1", b"second")


def test_truncate(proto1: list[Message]) -> None:
    (truncate,) = of_type(proto1, Truncate)
    relations = {r.relid: r.name for r in of_type(proto1, Relation)}
    assert [relations[r] for r in truncate.relids] == ["t_parent", "t_child"]
    assert truncate.options == 3 and truncate.cascade and truncate.restart_identity


def test_logical_messages_and_origin(proto1: list[Message]) -> None:
    tx, nontx = of_type(proto1, LogicalMessage)
    assert (tx.transactional, tx.prefix, tx.content) == (True, "cv", b"in tx")
    assert (nontx.transactional, nontx.prefix, nontx.content) == (False, "cv-nontx", b"\x00\xff")
    assert nontx.lsn > tx.lsn
    (origin,) = of_type(proto1, Origin)
    assert (origin.name, origin.commit_lsn) == ("upstream", 0xAB)


def test_ddl_sends_new_relation(proto1: list[Message]) -> None:
    shapes = [r for r in of_type(proto1, Relation) if r.name == "t_default"]
    assert [len(r.columns) for r in shapes] == [8, 9]
    assert (shapes[1].columns[-1].name, shapes[1].columns[-1].type_oid) == ("extra", 20)


def test_proto1_big_transaction_arrives_whole(proto1: list[Message]) -> None:
    texts = [m.new[1] for m in of_type(proto1, Insert) if len(m.new) == 2]
    bulk = [t for t in texts if isinstance(t, bytes) and t[:4] in (b"row ", b"kept")]
    assert len(bulk) == 1501
    # rolled-back savepoint rows and the aborted transaction never reach protocol 1
    assert not any(isinstance(t, bytes) and t[:4] in (b"gone", b"abor") for t in texts)


def test_proto2_streaming(proto2: list[Message]) -> None:
    counts = Counter(type(m).__name__ for m in proto2)
    assert counts["StreamStart"] == counts["StreamStop"] == 11
    assert counts["StreamCommit"] == 1 and counts["StreamAbort"] == 2
    starts = of_type(proto2, StreamStart)
    committed, aborted = starts[0].xid, starts[-1].xid
    firsts = [s.first_segment for s in starts if s.xid == committed]
    assert firsts[0] is True and not any(firsts[1:])
    savepoint_abort, whole_abort = of_type(proto2, StreamAbort)
    assert savepoint_abort.xid == committed and savepoint_abort.subxid != committed
    assert whole_abort.xid == whole_abort.subxid == aborted
    assert savepoint_abort.abort_lsn is None
    (commit,) = of_type(proto2, StreamCommit)
    assert commit.xid == committed and commit.end_lsn > commit.commit_lsn and commit.flags == 0


def test_proto2_stream_data_carries_xid(proto2: list[Message]) -> None:
    in_stream = False
    xids: Counter[int] = Counter()
    for msg in proto2:
        if isinstance(msg, StreamStart):
            in_stream = True
        elif isinstance(msg, StreamStop):
            in_stream = False
        elif isinstance(msg, Insert | Relation):
            if in_stream:
                assert msg.xid is not None
                xids[msg.xid] += isinstance(msg, Insert)
            else:
                assert msg.xid is None
    savepoint_abort, whole_abort = of_type(proto2, StreamAbort)
    # Data of a subtransaction is tagged with the subxact's own xid; the rows of
    # the rolled-back savepoint are streamed before its Stream Abort.
    assert xids[savepoint_abort.xid] == 1500
    # Aborted parts are streamed only up to the abort; the rest is dropped unsent.
    assert 0 < xids[savepoint_abort.subxid] <= 1500
    assert 0 < xids[whole_abort.xid] <= 2000
    others = set(xids) - {savepoint_abort.xid, savepoint_abort.subxid, whole_abort.xid}
    assert [xids[x] for x in others] == [1]  # the row inserted after ROLLBACK TO SAVEPOINT


def test_binary_values() -> None:
    messages = decode_all("proto1_binary.jsonl", proto=1)
    first = of_type(messages, Insert)[0]
    assert first.new[0] == BinaryValue(struct.pack(">i", 1))
    assert first.new[1] == BinaryValue(b"one")


def test_decoder_rejects_stream_state_errors() -> None:
    start = struct.pack(">cIB", b"S", 7, 1)
    stop = b"E"
    with pytest.raises(DecodeError, match="protocol 1"):
        PgoutputDecoder(1).decode(start)
    decoder = PgoutputDecoder(2)
    with pytest.raises(DecodeError, match="outside"):
        decoder.decode(stop)
    decoder.decode(start)
    assert decoder.in_stream
    with pytest.raises(DecodeError, match="Stream Stop"):
        decoder.decode(start)
    decoder.decode(stop)
    assert not decoder.in_stream


def test_offset_and_memoryview() -> None:
    raw = raw_messages("proto1.jsonl")[1]
    header = b"w" + bytes(24)
    assert decode_message(memoryview(header + raw), 25) == decode_message(raw)


def test_stream_abort_protocol4_form() -> None:
    msg = decode_message(struct.pack(">cIIQq", b"A", 5, 6, 0x10, 0))
    assert msg == StreamAbort(5, 6, 0x10, datetime(2000, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("name", ["proto1.jsonl", "proto2_stream.jsonl", "proto1_binary.jsonl"])
def test_every_truncation_and_extension_is_a_decode_error(name: str) -> None:
    seen: set[int] = set()
    samples = []
    for raw in raw_messages(name):  # one sample of each message type, short ones first
        if raw[0] not in seen and len(raw) < 400:
            seen.add(raw[0])
            samples.append(raw)
    for raw in samples:
        in_stream = raw[0] in b"IUDRYT" and name.startswith("proto2")
        for cut in range(len(raw)):
            with pytest.raises(DecodeError):
                decode_message(raw[:cut], in_stream=in_stream)
        if raw[0] not in b"A":  # Stream Abort's length tells protocol 2 from 4
            with pytest.raises(DecodeError):
                decode_message(raw + b"\0", in_stream=in_stream)


def test_unknown_message_type() -> None:
    with pytest.raises(DecodeError, match="0x7a"):
        decode_message(b"z123")
