"""Build the producer backend named by `kafka.producer`; confluent-kafka is imported lazily."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from agent.errors import ServiceError
from agent.settings import KafkaSettings
from connectors.kafka.producer import (
    Delivered,
    DeliveryTracker,
    ProducerTuning,
    RecordProducer,
)


class Producer(Protocol):
    """What the Kafka sink needs from a producer backend."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        partition: int | None = None,
        on_delivery: Callable[[Delivered | None, ServiceError | None], None] | None = None,
    ) -> Future[Delivered] | Any: ...

    def delivery_callback(self, tracker: DeliveryTracker) -> Any:
        """The callback `produce` takes, built once per tracker (per transaction)."""
        ...

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        partition: int | None,
        callback: Any,
    ) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def partitions_for(self, topic: str) -> set[int]: ...

    def close(self, timeout: float | None = None) -> None: ...


def make_producer(
    settings: KafkaSettings,
    *,
    tuning: ProducerTuning | None = None,
    client_id: str = "changevault",
) -> Producer:
    if settings.producer == "confluent-kafka":
        from connectors.kafka.confluent_producer import ConfluentRecordProducer

        return ConfluentRecordProducer(settings, tuning=tuning, client_id=client_id)
    return RecordProducer(settings, tuning=tuning, client_id=client_id)
