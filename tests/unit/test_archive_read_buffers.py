"""The archive reader's buffering: records cut out of large plaintext blocks, a
big transaction's envelopes spilled in batches and read back a block at a time.
Whatever the block boundaries, the same bytes come back in the same order."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from agent.archive.reader import TxEvents
from agent.archive.records import (
    EventRecord,
    Record,
    TxBeginRecord,
    TxEndRecord,
    encode_record,
    read_records,
)
from agent.errors import DecodeError
from agent.events import Position


class Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a decompressor may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def _records() -> list[Record]:
    p = Position("0/10", (16,))
    events = [EventRecord(b'{"i":%d,"pad":"%s"}' % (i, b"x" * (i % 7))) for i in range(2000)]
    big = EventRecord(b'{"big":"' + b"y" * (3 * 1024 * 1024) + b'"}')  # > one block
    return [TxBeginRecord(p, "7", datetime(2026, 1, 1, tzinfo=UTC)), *events, big,
            TxEndRecord(p, len(events) + 1)]


@pytest.mark.parametrize("step", [1 << 30, 4096, 7])
def test_records_come_back_whatever_the_stream_returns_per_read(step: int) -> None:
    recs = _records()
    data = b"".join(encode_record(r) for r in recs)
    assert list(read_records(Trickle(data, step))) == recs


@pytest.mark.parametrize("cut", [2, 5 + 3])
def test_a_truncated_plaintext_is_a_decode_error(cut: int) -> None:
    data = encode_record(EventRecord(b'{"a":1}'))
    with pytest.raises(DecodeError, match="ends inside a record"):
        list(read_records(io.BytesIO(data + data[:cut])))


def test_a_spilled_transaction_reads_back_in_order_twice() -> None:
    envelopes = [b'{"i":%d}' % i * (1 + i % 5) for i in range(50_000)]
    envelopes.insert(25_000, b"z" * (3 * 1024 * 1024))  # one envelope bigger than a block
    events = TxEvents(memory_limit=64 * 1024)
    try:
        for e in envelopes:
            events.add(e)
        assert events.count == len(envelopes)
        assert list(events) == envelopes
        assert list(events) == envelopes
    finally:
        events.close()


def test_a_small_transaction_stays_in_memory() -> None:
    events = TxEvents()
    for e in (b"a", b"bb"):
        events.add(e)
    assert list(events) == [b"a", b"bb"] and events._file is None
