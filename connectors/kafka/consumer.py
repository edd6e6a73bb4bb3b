"""Read topics back from the beginning to the end offsets seen at the start.

Used by `changevault events --from-kafka` and by tests. No consumer group:
partitions are assigned directly, so nothing is committed and nothing about
the reader is stored on the broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ServiceError
from agent.settings import KafkaSettings
from connectors.kafka.client_config import connection_kwargs, kafka_error

_MAX_TAIL_POLLS = 20


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a tombstone
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def read_topics(
    settings: KafkaSettings,
    topics: Sequence[str],
    *,
    idle_timeout: float = 30.0,
    client_id: str = "changevault-reader",
) -> Iterator[ConsumedRecord]:
    """Every record of `topics` up to (at least) the current end, per partition in offset
    order. Records produced meanwhile may be included; none before the end is missed."""
    from kafka import KafkaConsumer, TopicPartition

    try:
        consumer: Any = KafkaConsumer(
            **connection_kwargs(settings, client_id),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=10_000,
        )
    except Exception as exc:
        raise kafka_error(settings, "connecting the reader", exc) from None
    try:
        assigned: list[Any] = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                raise ServiceError(
                    f"Kafka at {','.join(settings.bootstrap_servers)}: topic {topic} not found"
                )
            assigned.extend(TopicPartition(topic, p) for p in sorted(partitions))
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends: dict[Any, int] = consumer.end_offsets(assigned)
        pending = {tp for tp in assigned if consumer.position(tp) < ends[tp]}
        tail_polls: dict[Any, int] = {}
        last_progress = time.monotonic()
        while pending:
            batches = consumer.poll(timeout_ms=500)
            if batches:
                last_progress = time.monotonic()
            for tp, records in batches.items():
                if tp not in pending:
                    continue
                for rec in records:
                    yield ConsumedRecord(
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        key=rec.key,
                        value=rec.value,
                        headers=list(rec.headers or []),
                        timestamp_ms=rec.timestamp,
                    )
            # Past the end offset, keep draining while polls still return records
            # (bounded): tansu 0.6 reports the end of a multi-record batch as its
            # base offset + 1, so the rest of that batch lies "past the end".
            # Offsets are compared by position: compaction leaves gaps.
            for tp in list(pending):
                if consumer.position(tp) < ends[tp]:
                    continue
                tail_polls[tp] = tail_polls.get(tp, 0) + 1
                if not batches.get(tp) or tail_polls[tp] > _MAX_TAIL_POLLS:
                    pending.discard(tp)
            if pending and time.monotonic() - last_progress > idle_timeout:
                raise ServiceError(
                    f"Kafka at {','.join(settings.bootstrap_servers)}: no records for "
                    f"{idle_timeout:g}s while reading {len(pending)} partition(s) to their end"
                )
    except ServiceError:
        raise
    except Exception as exc:
        raise kafka_error(settings, "reading topics", exc) from None
    finally:
        consumer.close()
