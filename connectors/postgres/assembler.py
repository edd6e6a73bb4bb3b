"""Walsender messages -> committed transactions, in commit order.

Messages are buffered raw (see spill.py) and decoded only when the consumer
iterates a transaction's events, so a transaction costs one pass of decoding
and bounded memory. Relation messages stay inside the buffers and reach the
relation history in commit order, which is the order pgoutput assumes its
client applies them. The schemas a transaction introduces are worked out
before it is yielded (on a scratch copy of the history) so `Transaction.schemas`
is complete when the pipeline writes the transaction's begin record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from agent.events import ChangeEvent, Position, TableSchema, Transaction
from connectors.postgres.pgoutput import (
    Begin,
    Commit,
    LogicalMessage,
    StreamAbort,
    StreamCommit,
    StreamStart,
    decode_message,
)
from connectors.postgres.relations import EventBuilder, RelationHistory
from connectors.postgres.replication import lsn_to_int, lsn_to_text
from connectors.postgres.spill import TransactionBuffer

_XID = struct.Struct("!I")
_SCHEMA_TAGS = frozenset(b"RY")
# Data messages that carry an xid right after the tag inside a stream.
_XID_TAGS = frozenset(b"IUDRYTM")


def commit_position(commit_lsn: int, end_lsn: int) -> Position:
    """The commit LSN names the transaction; its end is where streaming resumes
    so a confirmed transaction is not sent again."""
    return Position(lsn_to_text(commit_lsn), (commit_lsn,), (("end_lsn", lsn_to_text(end_lsn)),))


def resume_lsn(position: Position) -> int:
    end = position.get("end_lsn")
    if end is not None:
        return lsn_to_int(end)
    return position.sort_key[0]


class _Pending:
    """A transaction being received, with its Relation/Type messages kept aside."""

    __slots__ = ("buffer", "in_stream", "schema_messages")

    def __init__(self, buffer: TransactionBuffer, in_stream: bool) -> None:
        self.buffer = buffer
        self.in_stream = in_stream
        self.schema_messages: list[tuple[int, bytes]] = []

    def append(self, payload: bytes, subxid: int = 0) -> None:
        self.buffer.append(payload, subxid)
        if payload[0] in _SCHEMA_TAGS:
            self.schema_messages.append((subxid, payload))


class TransactionAssembler:
    """Feeds on pgoutput payloads; returns a Transaction when one commits.

    `skip_through`: transactions ending at or before this LSN were already
    yielded before a reconnect and are dropped (no duplicates in one process).
    """

    def __init__(
        self,
        spill_dir: Path,
        builder: EventBuilder,
        scratch_history: Callable[[], RelationHistory],
        on_new_schemas: Callable[[list[TableSchema]], None],
        memory_budget: int = 4 * 1024 * 1024,
    ) -> None:
        self._spill_dir = spill_dir
        self._builder = builder
        self._scratch = scratch_history
        self._on_new_schemas = on_new_schemas
        self._budget = memory_budget
        self._current: _Pending | None = None
        self._begin: Begin | None = None
        self._stream_xid: int | None = None
        self._streams: dict[int, _Pending] = {}
        self.skip_through = 0
        self.streams_seen = 0  # Stream Start messages (tests assert streaming happened)
        self.last_message: LogicalMessage | None = None

    @property
    def open(self) -> bool:
        """A transaction is half received (its commit has not arrived)."""
        return self._current is not None or bool(self._streams)

    def reset(self) -> None:
        """After a lost connection: half-received transactions will be sent again."""
        if self._current is not None:
            self._current.buffer.discard()
        for pending in self._streams.values():
            pending.buffer.discard()
        self._current = None
        self._begin = None
        self._stream_xid = None
        self._streams.clear()

    def feed(self, payload: bytes) -> Transaction | LogicalMessage | None:
        """One XLogData payload. Returns a committed Transaction, a
        non-transactional logical message (heartbeats), or None."""
        tag = payload[0]
        current = self._current
        if current is not None:
            if tag == 0x43:  # 'C'
                commit = decode_message(payload)
                assert isinstance(commit, Commit)
                assert self._begin is not None
                self._current = None
                return self._finish(
                    current, self._begin.xid, commit.commit_lsn, commit.end_lsn, commit.commit_ts
                )
            # The hot path: _Pending.append inlined.
            current.buffer.append(payload)
            if tag in _SCHEMA_TAGS:
                current.schema_messages.append((0, payload))
            return None
        if self._stream_xid is not None:
            if tag == 0x45:  # 'E': Stream Stop
                self._stream_xid = None
                return None
            subxid = _XID.unpack_from(payload, 1)[0] if tag in _XID_TAGS else self._stream_xid
            self._streams[self._stream_xid].append(payload, subxid)
            return None
        msg = decode_message(payload)
        if isinstance(msg, Begin):
            self._begin = msg
            self._current = _Pending(self._new_buffer(msg.xid), in_stream=False)
        elif isinstance(msg, StreamStart):
            self.streams_seen += 1
            self._stream_xid = msg.xid
            if msg.xid not in self._streams:
                self._streams[msg.xid] = _Pending(self._new_buffer(msg.xid), in_stream=True)
        elif isinstance(msg, StreamCommit):
            pending = self._streams.pop(msg.xid, None)
            if pending is None:
                pending = _Pending(self._new_buffer(msg.xid), in_stream=True)
            return self._finish(pending, msg.xid, msg.commit_lsn, msg.end_lsn, msg.commit_ts)
        elif isinstance(msg, StreamAbort):
            pending = self._streams.get(msg.xid)
            if pending is not None:
                if msg.subxid == msg.xid:
                    pending.buffer.discard()
                    del self._streams[msg.xid]
                else:
                    pending.buffer.abort_subtransaction(msg.subxid)
                    pending.schema_messages = [
                        (s, p) for s, p in pending.schema_messages if s != msg.subxid
                    ]
        elif isinstance(msg, LogicalMessage):
            return msg
        return None

    def _new_buffer(self, xid: int) -> TransactionBuffer:
        return TransactionBuffer(self._spill_dir, xid, self._budget)

    def _finish(
        self, pending: _Pending, xid: int, commit_lsn: int, end_lsn: int, commit_ts: datetime
    ) -> Transaction | None:
        if end_lsn <= self.skip_through:
            pending.buffer.discard()
            return None
        schemas = self._preview_schemas(pending)
        return Transaction(
            position=commit_position(commit_lsn, end_lsn),
            txid=str(xid),
            commit_ts=commit_ts,
            events=self._events(pending, commit_lsn),
            schemas=schemas,
        )

    def _preview_schemas(self, pending: _Pending) -> list[TableSchema]:
        """The new table shapes this transaction brings, without touching the history."""
        if not pending.schema_messages:
            return []
        scratch = self._scratch()
        found: list[TableSchema] = []
        messages = (
            decode_message(p, in_stream=pending.in_stream) for _s, p in pending.schema_messages
        )
        for _event in EventBuilder(scratch).transaction_events(messages, 0, found):
            pass
        return found

    def _events(self, pending: _Pending, commit_lsn: int) -> Iterator[ChangeEvent]:
        new: list[TableSchema] = []
        yield from self._builder.payload_events(
            pending.buffer.replay(), pending.in_stream, commit_lsn, new
        )
        if new:
            self._on_new_schemas(new)
