"""A thin, durable-by-default wrapper over kafka-python's KafkaProducer.

acks=all and the idempotent producer: a retried batch is not duplicated, and
with at most 5 requests in flight per connection the broker's sequence
numbers keep per-partition order across retries (Kafka's documented limit
for idempotence). Batching favours throughput: lingering a few milliseconds
lets a partition's records share one compressed batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import ServiceError
from agent.settings import KafkaSettings
from connectors.kafka.client_config import connection_kwargs, kafka_error


@dataclass(frozen=True, slots=True)
class ProducerTuning:
    linger_ms: int = 5
    batch_size: int = 512 * 1024
    max_in_flight: int = 5  # idempotence keeps order only up to 5
    max_request_size: int = 8 * 1024 * 1024
    # How long a record may wait for the broker (incl. retries) before its
    # future fails; the sink then retries it and holds the checkpoint meanwhile.
    delivery_timeout_ms: int = 120_000
    request_timeout_ms: int = 30_000
    max_block_ms: int = 60_000  # send() blocks this long when the buffer is full / no metadata


@dataclass(frozen=True, slots=True)
class Delivered:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class DeliveryTracker(Protocol):
    """Told the outcome of each record sent with `produce` (one object per
    transaction, not a closure per record: the hot path of the Kafka sink)."""

    def delivered(self) -> None: ...

    def failed(self, error: ServiceError) -> None: ...


def producer_config(
    settings: KafkaSettings, tuning: ProducerTuning, client_id: str
) -> dict[str, Any]:
    """The KafkaProducer keyword arguments (includes the SASL password: never log it)."""
    if tuning.max_in_flight > 5:
        raise ValueError("the idempotent producer keeps order only with max_in_flight <= 5")
    return {
        **connection_kwargs(settings, client_id),
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "linger_ms": tuning.linger_ms,
        "batch_size": tuning.batch_size,
        "max_in_flight_requests_per_connection": tuning.max_in_flight,
        "max_request_size": tuning.max_request_size,
        "delivery_timeout_ms": tuning.delivery_timeout_ms,
        "request_timeout_ms": tuning.request_timeout_ms,
        "max_block_ms": tuning.max_block_ms,
        # Topics are created by TopicAdmin with our settings, never by a send.
        "allow_auto_create_topics": False,
    }


class RecordProducer:
    """Sends raw (already sealed) records; the caller tracks durability per future."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        tuning: ProducerTuning | None = None,
        client_id: str = "changevault",
    ) -> None:
        from kafka import KafkaProducer

        self.settings = settings
        config = producer_config(settings, tuning or ProducerTuning(), client_id)
        try:
            self._producer: Any = KafkaProducer(**config)
        except Exception as exc:
            raise kafka_error(settings, "connecting the producer", exc) from None

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        partition: int | None = None,
        on_delivery: Callable[[Delivered | None, ServiceError | None], None] | None = None,
    ) -> Any:
        """Queue one record; `value=None` is a tombstone. Returns kafka-python's future.

        `on_delivery(delivered, None)` runs once the record is acknowledged by
        all in-sync replicas, `on_delivery(None, error)` if it finally failed;
        both on the producer's I/O thread, so keep it short.
        """
        try:
            future = self._producer.send(
                topic,
                key=key,
                value=value,
                headers=headers,
                timestamp_ms=timestamp_ms,
                partition=partition,
            )
        except Exception as exc:
            raise kafka_error(self.settings, f"sending to {topic}", exc) from None
        if on_delivery is not None:
            callback = on_delivery

            def ok(meta: Any) -> None:
                callback(Delivered(meta.topic, meta.partition, meta.offset, meta.timestamp), None)

            def failed(exc: BaseException) -> None:
                callback(None, kafka_error(self.settings, f"delivering to {topic}", exc))

            future.add_callback(ok)
            future.add_errback(failed)
        return future

    def delivery_callback(self, tracker: DeliveryTracker) -> Any:
        """What `produce` takes as `callback`: built once per tracker."""
        settings = self.settings

        def ok(_meta: Any) -> None:
            tracker.delivered()

        def failed(exc: BaseException) -> None:
            tracker.failed(kafka_error(settings, "delivering a record", exc))

        return ok, failed

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        partition: int | None,
        callback: Any,
    ) -> None:
        """Queue one record, its outcome reported to `delivery_callback(tracker)`."""
        try:
            future = self._producer.send(
                topic,
                key=key,
                value=value,
                headers=headers,
                timestamp_ms=timestamp_ms,
                partition=partition,
            )
        except Exception as exc:
            raise kafka_error(self.settings, f"sending to {topic}", exc) from None
        ok, failed = callback
        future.add_callback(ok)
        future.add_errback(failed)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is acknowledged or failed; ServiceError on timeout."""
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:
            raise kafka_error(self.settings, "flushing the producer", exc) from None

    def partitions_for(self, topic: str) -> set[int]:
        try:
            partitions: set[int] = self._producer.partitions_for(topic)
        except Exception as exc:
            raise kafka_error(self.settings, f"reading partitions of {topic}", exc) from None
        return partitions

    def close(self, timeout: float | None = None) -> None:
        self._producer.close(timeout=timeout)
