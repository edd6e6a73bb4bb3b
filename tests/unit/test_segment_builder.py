"""SegmentBuilder: the zstd frame of the records in order, however they were added."""

from __future__ import annotations

from datetime import UTC, datetime

import zstandard

from agent.archive.records import (
    EventRecord,
    Record,
    TxBeginRecord,
    TxEndRecord,
    encode_record,
)
from agent.archive.segment import SegmentBuilder
from agent.events import Position


def test_events_added_directly_give_the_same_plaintext_as_records() -> None:
    pos = Position("0/10", (16,))
    records: list[Record] = [TxBeginRecord(pos, "7", datetime(2026, 1, 1, tzinfo=UTC))]
    # Enough bytes to cross several compression chunks, sizes around a chunk edge.
    for i in range(400):
        records.append(EventRecord(b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i * 7 % 1500))))
    records.append(EventRecord(b""))
    records.append(EventRecord(b"y" * (SegmentBuilder.CHUNK_BYTES + 3)))
    records.append(TxEndRecord(pos, 402))
    direct, via_records = SegmentBuilder(), SegmentBuilder()
    for rec in records:
        via_records.add(rec)
        if isinstance(rec, EventRecord):
            direct.add_event(rec.envelope)
        else:
            direct.add(rec)
    expected = b"".join(encode_record(r) for r in records)
    for builder in (direct, via_records):
        assert builder.records == len(records)
        assert builder.raw_bytes == len(expected)
        frame = builder.finish()
        plain = zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=True).read()
        assert plain == expected


def test_an_empty_builder_finishes_as_an_empty_frame() -> None:
    frame = SegmentBuilder().finish()
    assert zstandard.ZstdDecompressor().stream_reader(frame).read() == b""
