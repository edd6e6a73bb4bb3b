"""The change-event envelope of CONTRACT.md, encoded once per event.

Values arrive already converted to JSON-compatible Python values by the source
connector (decimal strings, ISO timestamps, base64 bytes, non-finite floats as
strings). On the hot path the parts that repeat — the source block of a
transaction, the schema and table — are encoded once and cached, and one call
of orjson writes the event's own part (key, before, after, unchanged): the
stdlib's C encoder took ~7 us for a typical row, a third of the capture
thread's budget at 10k rows/s; orjson takes ~0.4 us. The document is the one
`json.dumps` of the whole envelope gives; only float spelling may differ
(orjson writes 1e-7 where json.dumps writes 1e-07: the same number).
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from agent import fastjson
from agent.errors import UncapturableChange
from agent.events import ChangeEvent, Position, event_id

# A JSON string literal, as the stdlib writes one with ensure_ascii=False.
_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring
# Cached per-transaction heads kept per encoder; a few cover the snapshot writer
# and the pipeline encoding at the same time.
_MAX_CACHED_HEADS: Final = 8


def _refuse_non_finite(values: Iterable[Any], where: str) -> None:
    """orjson would write NaN or an infinity as null, silently. Column values
    should never hold one: the sources spell non-finite floats as strings, and
    PostgreSQL json numbers arrive as fastjson.JsonNumber (not float), written
    as their text, so `1e400` stays `1e400`. A float that is not finite is a
    converter's fault: stop rather than alter the data (nested documents are
    walked; flat rows cost one class check per value)."""
    for v in values:
        cls = v.__class__
        if cls is float:
            if not math.isfinite(v):
                raise UncapturableChange(
                    f"non-finite float {v!r} in a change to {where}: capture stops rather "
                    "than write it as null"
                )
        elif cls is dict:
            _refuse_non_finite(v.values(), where)
        elif cls is list:
            _refuse_non_finite(v, where)


def format_ts(ts: datetime) -> str:
    """ISO 8601 with microseconds and an explicit UTC offset."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class EnvelopeEncoder:
    connector: str
    database: str
    # (position text, txid, commit_ts) -> the transaction's fragments, see _head
    _heads: dict[tuple[str, str, str], tuple[bytes, bytes, bytes, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # (op, schema, table) -> `","op":…,"table":…`
    _tables: dict[tuple[str, str, str], bytes] = field(
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
        key, before, after = ev.key, ev.before, ev.after
        for row in (key, before, after):
            if row:
                _refuse_non_finite(row.values(), f"{ev.schema}.{ev.table}")
        tail = fastjson.dumps(
            {"key": key, "before": before, "after": after, "unchanged": list(ev.unchanged)}
        )
        data = b"%b%d%b%b%d%b%d},%b" % (
            head[0], seq, middle, head[1], seq, head[2], ev.schema_version, tail[1:]
        )
        return f"{head[3]}{seq}", data

    def _head(
        self, position: Position, txid: str, commit_ts: str
    ) -> tuple[bytes, bytes, bytes, str]:
        """`{"id":"<id without seq>`, `,"position":…,"seq":`, `,"commit_ts":…,"schema_version":`,
        and the event id without its seq."""
        eid_prefix = event_id(self.connector, self.database, position, 0)[:-1]
        if event_id(self.connector, self.database, position, 12) != f"{eid_prefix}12":
            raise AssertionError("event_id() no longer ends with the seq; update EnvelopeEncoder")
        position_txid = f',"position":{_quote(position.text)},"txid":{_quote(txid)},"seq":'
        head = (
            ('{"id":' + _quote(eid_prefix)[:-1]).encode("utf-8"),
            position_txid.encode("utf-8"),
            f',"commit_ts":{_quote(commit_ts)},"schema_version":'.encode(),
            eid_prefix,
        )
        if len(self._heads) >= _MAX_CACHED_HEADS:
            self._heads.clear()
        self._heads[(position.text, txid, commit_ts)] = head
        return head

    def _table(self, op: str, schema: str, table: str) -> bytes:
        middle = (
            f'","op":{_quote(op)},"source":{{"connector":{_quote(self.connector)},'
            f'"database":{_quote(self.database)},"schema":{_quote(schema)},'
            f'"table":{_quote(table)}'
        ).encode()
        self._tables[(op, schema, table)] = middle
        return middle


def decode_envelope(data: bytes) -> dict[str, Any]:
    doc = fastjson.loads(data)
    if not isinstance(doc, dict) or "id" not in doc or "source" not in doc:
        from agent.errors import DecodeError

        raise DecodeError("expected a change-event envelope (object with id and source)")
    return doc
