"""The change-event envelope of CONTRACT.md, encoded once per event.

Values arrive already converted to JSON-compatible Python values by the source
connector (decimal strings, ISO timestamps, base64 bytes), so encoding is a
single `json.dumps` on the hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.events import ChangeEvent, Position, event_id

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def format_ts(ts: datetime) -> str:
    """ISO 8601 with microseconds and an explicit UTC offset."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class EnvelopeEncoder:
    connector: str
    database: str

    def encode(
        self, ev: ChangeEvent, position: Position, txid: str, commit_ts: str
    ) -> tuple[str, bytes]:
        """Return the event's stable id and its envelope as UTF-8 JSON."""
        eid = event_id(self.connector, self.database, position, ev.seq)
        doc = {
            "id": eid,
            "op": ev.op,
            "source": {
                "connector": self.connector,
                "database": self.database,
                "schema": ev.schema,
                "table": ev.table,
                "position": position.text,
                "txid": txid,
                "seq": ev.seq,
                "commit_ts": commit_ts,
                "schema_version": ev.schema_version,
            },
            "key": ev.key,
            "before": ev.before,
            "after": ev.after,
            "unchanged": list(ev.unchanged),
        }
        return eid, _ENCODER.encode(doc).encode("utf-8")


def decode_envelope(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or "id" not in doc or "source" not in doc:
        from agent.errors import DecodeError

        raise DecodeError("expected a change-event envelope (object with id and source)")
    return doc
