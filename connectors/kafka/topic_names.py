"""Kafka topic names for captured tables, deterministic and collision-safe.

Kafka allows `[a-zA-Z0-9._-]`, at most 249 characters. Components (database,
schema, table) keep `[A-Za-z0-9_]` verbatim; every other character, including
`.` (our separator) and `-` (our escape character), becomes `-` followed by
the two lower-case hex digits of each of its UTF-8 bytes: `order-items` ->
`order-2ditems`, `crème` -> `cr-c3-a8me`. Decoding is unambiguous (`-` is
always followed by two hex digits), so two different tables never share a
topic. A name longer than 249 characters keeps its first 227 characters and
ends in `-h` + 20 hex digits of its SHA-256; `-h` cannot occur in a short name
because `h` is not a hex digit.
"""

from __future__ import annotations

import hashlib
import re

MAX_TOPIC_LENGTH = 249
_VERBATIM = re.compile(r"[A-Za-z0-9_]")
_HASH_HEX = 20


def encode_component(name: str) -> str:
    """One database/schema/table name as a topic-name component."""
    if not name:
        raise ValueError("expected a non-empty name")
    out: list[str] = []
    for ch in name:
        if _VERBATIM.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"-{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _bounded(name: str) -> str:
    if len(name) <= MAX_TOPIC_LENGTH:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_HEX]
    return f"{name[: MAX_TOPIC_LENGTH - _HASH_HEX - 2]}-h{digest}"


def table_topic(prefix: str, database: str, schema: str | None, table: str) -> str:
    """`<prefix>.<db>.<schema>.<table>`; MySQL has no schema: `<prefix>.<db>.<table>`."""
    parts = [database] + ([schema] if schema is not None else []) + [table]
    return _bounded(".".join([prefix, *(encode_component(p) for p in parts)]))


def transactions_topic(prefix: str) -> str:
    return f"{prefix}.transactions"


def metric_collision_key(topic: str) -> str:
    """Kafka refuses topics that differ only by `.` versus `_` (their metric names clash)."""
    return topic.replace(".", "_")
