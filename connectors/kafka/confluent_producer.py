"""The RecordProducer interface on confluent-kafka (librdkafka), the `kafka-fast` extra.

Same guarantees as the kafka-python backend: acks=all and the idempotent
producer (librdkafka keeps per-partition order across retries with up to 5
requests in flight). librdkafka does its I/O in C threads, but delivery
reports are only handed to Python from `poll()`/`flush()`, so a small poll
thread serves them; callbacks therefore run on that thread, as kafka-python's
run on its I/O thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.errors import ServiceError
from agent.settings import KafkaSecurity, KafkaSettings
from connectors.kafka.client_config import kafka_error
from connectors.kafka.producer import Delivered, DeliveryTracker, ProducerTuning

_POLL_INTERVAL_S = 0.05

log = logging.getLogger(__name__)


def security_config(security: KafkaSecurity | None) -> dict[str, Any]:
    """librdkafka properties for `kafka.security`; holds the password, never log it."""
    if security is None:
        return {"security.protocol": "PLAINTEXT"}
    conf: dict[str, Any] = {"security.protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if security.check_hostname else "none"
        )
        if security.ca_file is not None:
            conf["ssl.ca.location"] = str(security.ca_file)
        if security.cert_file is not None:
            conf["ssl.certificate.location"] = str(security.cert_file)
        if security.key_file is not None:
            conf["ssl.key.location"] = str(security.key_file)
    if security.protocol.startswith("SASL"):
        conf["sasl.mechanism"] = security.sasl_mechanism
        conf["sasl.username"] = security.username
        if security.password is not None:
            conf["sasl.password"] = security.password.get_secret_value()
    return conf


def confluent_config(
    settings: KafkaSettings, tuning: ProducerTuning, client_id: str
) -> dict[str, Any]:
    """The confluent_kafka.Producer configuration (includes the SASL password: never log it)."""
    if tuning.max_in_flight > 5:
        raise ValueError("the idempotent producer keeps order only with max_in_flight <= 5")
    return {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": client_id,
        **security_config(settings.security),
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": settings.compression,
        "linger.ms": tuning.linger_ms,
        "batch.size": tuning.batch_size,
        "max.in.flight.requests.per.connection": tuning.max_in_flight,
        "message.max.bytes": tuning.max_request_size,
        "delivery.timeout.ms": tuning.delivery_timeout_ms,
        "request.timeout.ms": tuning.request_timeout_ms,
    }


class DeliveryFuture:
    """The outcome of one send, future-like (`result`, `done`), cheaper than
    concurrent.futures.Future: no Condition per record, an Event only when waited on."""

    __slots__ = ("_done", "_error", "_event", "_lock", "_value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._done = False
        self._value: Delivered | None = None
        self._error: ServiceError | None = None
        self._event: threading.Event | None = None

    def _settle(self, value: Delivered | None, error: ServiceError | None) -> None:
        with self._lock:
            self._value, self._error, self._done = value, error, True
            event = self._event
        if event is not None:
            event.set()

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Delivered:
        """The Delivered record; raises its ServiceError, or TimeoutError."""
        with self._lock:
            if not self._done and self._event is None:
                self._event = threading.Event()
            event = None if self._done else self._event
        if event is not None and not event.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class ConfluentRecordProducer:
    """Sends raw (already sealed) records; the caller tracks durability per future."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        tuning: ProducerTuning | None = None,
        client_id: str = "changevault",
    ) -> None:
        try:
            from confluent_kafka import Producer
        except ImportError:
            raise ServiceError(
                "kafka.producer is confluent-kafka, expected the confluent_kafka package, "
                "found it missing: install changevault[kafka-fast]"
            ) from None
        self.settings = settings
        self._tuning = tuning or ProducerTuning()
        self._fatal: ServiceError | None = None
        self._futures_lock = threading.Lock()  # shared by this producer's DeliveryFutures
        config = confluent_config(settings, self._tuning, client_id)
        config["error_cb"] = self._on_error
        # librdkafka's own log lines go through logging (served by poll()), not stderr.
        config["logger"] = log
        try:
            self._producer: Any = Producer(config)
        except Exception as exc:
            raise kafka_error(settings, "connecting the producer", exc) from None
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, name="kafka-delivery-reports", daemon=True
        )
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(_POLL_INTERVAL_S)

    def _on_error(self, err: Any) -> None:
        # Transient errors (a broker down) are retried by librdkafka and surface
        # per record through delivery reports; only fatal ones stop the producer.
        if err.fatal():
            self._fatal = kafka_error(self.settings, "producing", _KafkaFailure(err))

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        partition: int | None = None,
        on_delivery: Callable[[Delivered | None, ServiceError | None], None] | None = None,
    ) -> DeliveryFuture:
        """Queue one record; `value=None` is a tombstone. Returns its DeliveryFuture.

        `on_delivery(delivered, None)` runs once the record is acknowledged by
        all in-sync replicas, `on_delivery(None, error)` if it finally failed;
        both on the delivery-report thread, so keep it short.
        """
        if self._fatal is not None:
            raise self._fatal
        future = DeliveryFuture(self._futures_lock)
        settings = self.settings

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                error = kafka_error(settings, f"delivering to {topic}", _KafkaFailure(err))
                future._settle(None, error)
                if on_delivery is not None:
                    on_delivery(None, error)
                return
            delivered = Delivered(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])
            future._settle(delivered, None)
            if on_delivery is not None:
                on_delivery(delivered, None)

        self._produce(topic, key, value, headers, timestamp_ms, partition, report)
        return future

    def delivery_callback(self, tracker: DeliveryTracker) -> Any:
        """What `produce` takes as `callback`: built once per tracker (librdkafka
        calls it with (error, message) on the delivery-report thread)."""
        settings = self.settings
        delivered = tracker.delivered

        def report(err: Any, msg: Any) -> None:
            if err is None:
                delivered()
                return
            topic = msg.topic() if msg is not None else "a topic"
            tracker.failed(kafka_error(settings, f"delivering to {topic}", _KafkaFailure(err)))

        return report

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
        """Queue one record, its outcome reported to `delivery_callback(tracker)`:
        no future and no closure per record."""
        if self._fatal is not None:
            raise self._fatal
        try:
            self._producer.produce(
                topic,
                value,
                key,
                partition=-1 if partition is None else partition,  # -1: the partitioner
                on_delivery=callback,
                timestamp=timestamp_ms,
                headers=headers,
            )
        except BufferError:
            self._produce(topic, key, value, headers, timestamp_ms, partition, callback)
        except Exception as exc:
            raise kafka_error(self.settings, f"sending to {topic}", exc) from None

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int,
        partition: int | None,
        report: Callable[[Any, Any], None],
    ) -> None:
        settings = self.settings
        kwargs: dict[str, Any] = {
            "key": key,
            "value": value,
            "headers": headers,
            "timestamp": timestamp_ms,
            "on_delivery": report,
        }
        if partition is not None:
            kwargs["partition"] = partition
        deadline = time.monotonic() + self._tuning.max_block_ms / 1000
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                # The local queue is full: block like kafka-python's max_block_ms,
                # letting delivery reports drain it.
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"Kafka at {','.join(settings.bootstrap_servers)}: sending to {topic} "
                        f"failed: local queue still full after {self._tuning.max_block_ms} ms"
                    ) from None
                self._producer.poll(_POLL_INTERVAL_S)
            except Exception as exc:
                raise kafka_error(settings, f"sending to {topic}", exc) from None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is acknowledged or failed; ServiceError on timeout."""
        try:
            left = self._producer.flush(-1 if timeout is None else timeout)
        except Exception as exc:
            raise kafka_error(self.settings, "flushing the producer", exc) from None
        if left:
            raise ServiceError(
                f"Kafka at {','.join(self.settings.bootstrap_servers)}: flushing the producer "
                f"failed: {left} records still unacknowledged after {timeout}s"
            )
        if self._fatal is not None:
            raise self._fatal

    def partitions_for(self, topic: str) -> set[int]:
        try:
            meta = self._producer.list_topics(topic, timeout=10)
        except Exception as exc:
            raise kafka_error(self.settings, f"reading partitions of {topic}", exc) from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            detail = "" if info is None else f": {info.error.str()}"
            raise ServiceError(
                f"Kafka at {','.join(self.settings.bootstrap_servers)}: expected topic {topic}, "
                f"found no partitions{detail}"
            )
        return set(info.partitions)

    def close(self, timeout: float | None = None) -> None:
        try:
            self._producer.flush(-1 if timeout is None else timeout)
        finally:
            self._closed.set()
            self._poller.join()


class _KafkaFailure(Exception):
    """A librdkafka KafkaError as an exception, for kafka_error's one line."""

    def __init__(self, err: Any) -> None:
        super().__init__(f"{err.name()}: {err.str()}")
