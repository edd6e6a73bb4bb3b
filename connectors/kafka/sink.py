"""The Kafka sink of CONTRACT.md: one sealed message per row, keyed for compaction.

- key: HMAC-SHA256 under keyhash.key of the typed (schema, table, primary key);
- value: the sealed envelope (self-contained: carries its signed data-key
  announcement; AAD binds topic, key and data-key id);
- a delete is followed by a tombstone under the same key; an update that
  changes the primary key becomes a delete (+ tombstone) of the old key and
  an insert of the new one; a truncate goes to every partition under a
  reserved key;
- one record per transaction on `<prefix>.transactions` (partition 0, so its
  order is commit order) for consumers that need order across tables.

Delivery callbacks arrive out of order across partitions; a transaction is
acknowledged once all its records are, and only the gap-free prefix is
reported to the pipeline.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.crypto.datakeys import DataKeyManager
from agent.crypto.keyhash import KeyHasher
from agent.crypto.messages import FORMAT_VERSION, MessageSealer, peek_data_key_id
from agent.envelope import format_ts
from agent.errors import ServiceError
from agent.settings import KafkaSettings, Settings
from connectors.base import EncodedEvent, SinkItem, TxBegin, TxEnd
from connectors.kafka.admin import TopicAdmin, topic_specs
from connectors.kafka.producer import Delivered
from connectors.kafka.producer_factory import Producer, make_producer
from connectors.kafka.topic_names import table_topic, transactions_topic

TRUNCATE_KEY_NAME = "truncate"
# Records outstanding and no acknowledgement for this long: the broker is down
# or hung. kafka-python would keep retrying quietly until delivery_timeout_ms;
# failing the sink instead makes the outage visible (sink_up, sink errors)
# while the checkpoint is held.
DELIVERY_STALL_SECONDS = 15.0


@dataclass
class _TxState:
    outstanding: int = 0
    ended: bool = False


class KafkaSink:
    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        data_keys: DataKeyManager,
        hasher: KeyHasher,
        stall_seconds: float = DELIVERY_STALL_SECONDS,
    ) -> None:
        assert settings.kafka is not None
        self.kafka: KafkaSettings = settings.kafka
        self.database = settings.source.database
        self.mysql = settings.source.type == "mysql"
        self.retention = settings.retention
        self.sealer = MessageSealer(data_keys)
        self.hasher = hasher
        self._producer: Producer | None = None
        self._admin: TopicAdmin | None = None
        self._topics: set[str] = set()
        self._lock = threading.Lock()
        self._txs: OrderedDict[int, _TxState] = OrderedDict()
        self._error: ServiceError | None = None
        self._ack: Callable[[int], None] = lambda i: None
        self._current: TxBegin | None = None
        self._counts: dict[str, int] = {}
        self._stall_seconds = stall_seconds
        self._in_flight = 0  # records sent, neither acknowledged nor failed
        self._last_delivery = time.monotonic()  # or when in-flight last rose from 0
        self.tx_topic = transactions_topic(self.kafka.topic_prefix)

    # -------------------------------------------------------------- lifecycle

    def open(self, ack: Callable[[int], None]) -> None:
        self._ack = ack
        self._admin = TopicAdmin(self.kafka)
        self._ensure([])
        self._producer = make_producer(self.kafka)

    def close(self) -> None:
        if self._producer is not None:
            # After a failure, waiting for a dead broker only delays the retry;
            # unacknowledged records are not confirmed and will be sent again.
            self._producer.close(timeout=0 if self._error is not None else 10)
        if self._admin is not None:
            self._admin.close()

    def tick(self) -> None:
        self._raise_if_failed()
        with self._lock:
            waiting = self._in_flight
            idle = time.monotonic() - self._last_delivery
        if waiting and idle > self._stall_seconds:
            self._error = ServiceError(
                f"Kafka at {','.join(self.kafka.bootstrap_servers)}: no delivery acknowledged "
                f"for {idle:.0f}s with {waiting} record(s) outstanding (broker down or hung?)"
            )
            raise self._error

    def flush(self, timeout: float) -> None:
        assert self._producer is not None
        self._producer.flush(timeout)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ----------------------------------------------------------------- topics

    def topic_for(self, schema: str, table: str) -> str:
        return table_topic(
            self.kafka.topic_prefix, self.database, None if self.mysql else schema, table
        )

    def _ensure(self, tables: list[tuple[str, str]]) -> None:
        assert self._admin is not None
        specs = topic_specs(
            self.kafka,
            self.database,
            [(None if self.mysql else s, t) for s, t in tables],
            self.retention,
        )
        todo = [s for s in specs if s.name not in self._topics]
        if todo:
            self._admin.ensure_topics(todo)
            self._topics.update(s.name for s in todo)

    # ----------------------------------------------------------------- accept

    def accept(self, item: SinkItem) -> None:
        self._raise_if_failed()
        if isinstance(item, TxBegin):
            self._current = item
            self._counts = {}
            with self._lock:
                self._txs[item.index] = _TxState()
        elif isinstance(item, EncodedEvent):
            self._event(item)
        elif isinstance(item, TxEnd):
            self._tx_record(item)
            with self._lock:
                self._txs[item.index].ended = True
            self._settle()

    def _event(self, item: EncodedEvent) -> None:
        ev = item.event
        topic = self.topic_for(ev.schema, ev.table)
        if topic not in self._topics:
            self._ensure([(ev.schema, ev.table)])
        self._counts[topic] = self._counts.get(topic, 0) + 1
        assert self._current is not None
        ts = int(self._current.commit_ts.timestamp() * 1000)
        if ev.op == "t":
            key = self.hasher.reserved(ev.schema, ev.table, TRUNCATE_KEY_NAME)
            assert self._producer is not None
            for partition in sorted(self._producer.partitions_for(topic)):
                self._send(item.index, topic, key, item.envelope, ts, partition)
            return
        key = self.hasher.row_key(ev.schema, ev.table, ev.key or {})
        old_key_values = _old_key(ev.before, ev.key)
        if ev.op == "u" and old_key_values is not None:
            # The primary key changed: the old row is gone, a new one exists.
            old_key = self.hasher.row_key(ev.schema, ev.table, old_key_values)
            doc = json.loads(item.envelope)
            deleted = {
                **doc,
                "id": doc["id"] + "/old",
                "op": "d",
                "key": old_key_values,
                "after": None,
                "unchanged": [],
            }
            inserted = {**doc, "op": "c", "before": None}
            self._send(item.index, topic, old_key, _dump(deleted), ts)
            self._send(item.index, topic, old_key, None, ts)
            self._send(item.index, topic, key, _dump(inserted), ts)
            return
        self._send(item.index, topic, key, item.envelope, ts)
        if ev.op == "d":
            self._send(item.index, topic, key, None, ts)  # tombstone: compaction drops the key

    def _tx_record(self, end: TxEnd) -> None:
        assert self._current is not None
        doc = {
            "txid": self._current.txid,
            "position": end.position.text,
            "commit_ts": format_ts(end.commit_ts),
            "events": self._counts,
        }
        ts = int(end.commit_ts.timestamp() * 1000)
        self._send(end.index, self.tx_topic, None, _dump(doc), ts, partition=0)

    def _send(
        self,
        index: int,
        topic: str,
        key: bytes | None,
        plaintext: bytes | None,
        ts_ms: int,
        partition: int | None = None,
    ) -> None:
        assert self._producer is not None
        value = None
        headers: list[tuple[str, bytes]] = [("cv-format", str(FORMAT_VERSION).encode())]
        if plaintext is not None:
            value = self.sealer.seal(plaintext, topic, key or b"")
            headers.append(("cv-key-id", peek_data_key_id(value).encode()))
        with self._lock:
            self._txs[index].outstanding += 1
            if self._in_flight == 0:
                self._last_delivery = time.monotonic()
            self._in_flight += 1
        self._producer.send(
            topic, key, value, headers, ts_ms, partition, on_delivery=self._delivery(index)
        )

    def _delivery(self, index: int) -> Callable[[Delivered | None, ServiceError | None], None]:
        def done(_meta: Delivered | None, error: ServiceError | None) -> None:
            with self._lock:
                self._in_flight -= 1
                self._last_delivery = time.monotonic()
            if error is not None:
                self._error = error
                return
            with self._lock:
                self._txs[index].outstanding -= 1
            self._settle()

        return done

    def _settle(self) -> None:
        """Acknowledge the gap-free prefix of fully delivered transactions."""
        last = None
        with self._lock:
            while self._txs:
                index, state = next(iter(self._txs.items()))
                if not state.ended or state.outstanding > 0:
                    break
                self._txs.popitem(last=False)
                last = index
        if last is not None:
            self._ack(last)


def _old_key(before: dict[str, Any] | None, key: dict[str, Any] | None) -> dict[str, Any] | None:
    """The old primary key when an update changed it, else None."""
    if before is None or not key or not all(k in before for k in key):
        return None
    old = {k: before[k] for k in key}
    return None if old == key else old


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
