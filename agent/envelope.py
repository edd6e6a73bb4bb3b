"""The change-event envelope of CONTRACT.md, encoded once per event.

Values arrive already converted to JSON-compatible Python values by the source
connector (decimal strings, ISO timestamps, base64 bytes). On the hot path the
parts that repeat — the source block of a transaction, the schema and table —
are encoded once and cached, and one call of the C JSON encoder writes the
event's own part (key, before, after, unchanged). The text is byte for byte
what `json.dumps` of the whole document with `_ENCODER`'s options gives.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from agent.events import ChangeEvent, Position, event_id

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# A JSON string literal, as _ENCODER writes one (ensure_ascii=False).
_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring
# Cached per-transaction heads kept per encoder; a few cover the snapshot writer
# and the pipeline encoding at the same time.
_MAX_CACHED_HEADS: Final = 8


def _value_encoder() -> Callable[[Any], str]:
    """`_ENCODER.encode` without its per-call cost: JSONEncoder.encode builds a new C
    encoder for every document; this builds one. markers=None skips circular-reference
    bookkeeping (decoded values are trees), which also keeps the encoder stateless,
    so threads may share it."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the pure-Python path gives the same text
        return _ENCODER.encode
    encoder = make(None, _ENCODER.default, _quote, None, ":", ",", False, False, False)

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode_value: Final = _value_encoder()


def format_ts(ts: datetime) -> str:
    """ISO 8601 with microseconds and an explicit UTC offset."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class EnvelopeEncoder:
    connector: str
    database: str
    # (position text, txid, commit_ts) -> the transaction's fragments, see _head
    _heads: dict[tuple[str, str, str], tuple[str, str, str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # (op, schema, table) -> `","op":…,"table":…`
    _tables: dict[tuple[str, str, str], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def encode(
        self, ev: ChangeEvent, position: Position, txid: str, commit_ts: str
    ) -> tuple[str, bytes]:
        """Return the event's stable id and its envelope as UTF-8 JSON."""
        seq = ev.seq
        head = self._heads.get((position.text, txid, commit_ts))
        if head is None:
            head = self._head(position, txid, commit_ts)
        middle = self._tables.get((ev.op, ev.schema, ev.table))
        if middle is None:
            middle = self._table(ev.op, ev.schema, ev.table)
        tail = _encode_value(
            {"key": ev.key, "before": ev.before, "after": ev.after, "unchanged": list(ev.unchanged)}
        )
        text = f"{head[0]}{seq}{middle}{head[1]}{seq}{head[2]}{ev.schema_version}}},{tail[1:]}"
        return f"{head[3]}{seq}", text.encode("utf-8")

    def _head(self, position: Position, txid: str, commit_ts: str) -> tuple[str, str, str, str]:
        """`{"id":"<id without seq>`, `,"position":…,"seq":`, `,"commit_ts":…,"schema_version":`,
        and the event id without its seq."""
        eid_prefix = event_id(self.connector, self.database, position, 0)[:-1]
        if event_id(self.connector, self.database, position, 12) != f"{eid_prefix}12":
            raise AssertionError("event_id() no longer ends with the seq; update EnvelopeEncoder")
        position_txid = f',"position":{_quote(position.text)},"txid":{_quote(txid)},"seq":'
        head = (
            '{"id":' + _quote(eid_prefix)[:-1],
            position_txid,
            f',"commit_ts":{_quote(commit_ts)},"schema_version":',
            eid_prefix,
        )
        if len(self._heads) >= _MAX_CACHED_HEADS:
            self._heads.clear()
        self._heads[(position.text, txid, commit_ts)] = head
        return head

    def _table(self, op: str, schema: str, table: str) -> str:
        middle = (
            f'","op":{_quote(op)},"source":{{"connector":{_quote(self.connector)},'
            f'"database":{_quote(self.database)},"schema":{_quote(schema)},'
            f'"table":{_quote(table)}'
        )
        self._tables[(op, schema, table)] = middle
        return middle


def decode_envelope(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or "id" not in doc or "source" not in doc:
        from agent.errors import DecodeError

        raise DecodeError("expected a change-event envelope (object with id and source)")
    return doc
