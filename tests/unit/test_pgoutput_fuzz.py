"""Fuzzing: random and mutated pgoutput bytes decode or raise DecodeError, nothing else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DecodeError
from connectors.postgres.pgoutput import Relation, decode_message
from connectors.postgres.pgtypes import TypeConverters
from connectors.postgres.relations import EventBuilder, RelationHistory

DATA = Path(__file__).parent / "data" / "pgoutput"


def _samples() -> list[bytes]:
    """Every distinct message type of the recordings, a few of each (shortest first)."""
    by_type: dict[int, list[bytes]] = {}
    for name in ("proto1.jsonl", "proto1_binary.jsonl"):
        with (DATA / name).open() as fh:
            for line in fh:
                raw = bytes.fromhex(json.loads(line)["data"])
                by_type.setdefault(raw[0], []).append(raw)
    return [raw for group in by_type.values() for raw in sorted(group, key=len)[:4]]


SAMPLES = _samples()
TAGS = sorted({raw[0] for raw in SAMPLES} | set(b"SEcA"))
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(data: bytes, in_stream: bool) -> None:
    with contextlib.suppress(DecodeError):
        decode_message(data, in_stream=in_stream)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes(data: bytes, in_stream: bool) -> None:
    _decode(data, in_stream)


@FUZZ
@given(st.sampled_from(TAGS), st.binary(max_size=120), st.booleans())
def test_random_bodies_behind_valid_tags(tag: int, body: bytes, in_stream: bool) -> None:
    _decode(bytes([tag]) + body, in_stream)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and raw:
            raw[pos] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, ord("t"), ord("u"), ord("n")]))
        elif action == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 8))]
        else:
            del raw[pos:]
    return bytes(raw)


@FUZZ
@given(mutated(), st.booleans())
def test_mutated_messages(data: bytes, in_stream: bool) -> None:
    _decode(data, in_stream)


def _builder() -> EventBuilder:
    history = RelationHistory(TypeConverters())
    for raw in SAMPLES:
        if raw[0] == ord("R"):
            msg = decode_message(raw)
            assert isinstance(msg, Relation)
            history.apply(msg)
    return EventBuilder(history)


@FUZZ
@given(mutated())
def test_mutated_rows_to_events(data: bytes) -> None:
    """Corrupt values reaching the type converters are DecodeErrors too."""
    builder = _builder()
    with contextlib.suppress(DecodeError):
        list(builder.transaction_events([decode_message(data)]))
