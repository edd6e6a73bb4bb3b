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
from typing import Any

from agent.crypto.datakeys import DataKeyManager
from agent.crypto.keyhash import KeyHasher
from agent.crypto.messages import FORMAT_VERSION, MessageSealer, peek_data_key_id
from agent.envelope import format_ts
from agent.errors import ServiceError
from agent.settings import KafkaSettings, Settings
from connectors.base import EncodedEvent, SinkItem, TxBegin, TxEnd
from connectors.kafka.admin import TopicAdmin, topic_specs
from connectors.kafka.producer_factory import Producer, make_producer
from connectors.kafka.topic_names import table_topic, transactions_topic

TRUNCATE_KEY_NAME = "truncate"
# Records outstanding and no acknowledgement for this long: the broker is down
# or hung. kafka-python would keep retrying quietly until delivery_timeout_ms;
# failing the sink instead makes the outage visible (sink_up, sink errors)
# while the checkpoint is held.
DELIVERY_STALL_SECONDS = 15.0
# A sealed value's format byte, announcement length (4) and announcement head
# up to the end of its data-key id (agent/crypto/messages.py).
_KEY_ID_PREFIX = 1 + 4 + 21


class _TxDelivery:
    """One transaction's records in flight: the delivery callback object of all
    of them (one per transaction, not a closure per record). `sent` is written
    by the sink thread only; `acked` under the sink's lock, since librdkafka
    may serve delivery reports from more than one thread (poll and flush)."""

    __slots__ = ("acked", "ended", "index", "sent", "sink")

    def __init__(self, sink: KafkaSink, index: int) -> None:
        self.sink = sink
        self.index = index
        self.sent = 0
        self.acked = 0
        self.ended = False

    @property
    def done(self) -> bool:
        return self.ended and self.acked >= self.sent

    def delivered(self) -> None:
        sink = self.sink
        with sink._lock:
            self.acked += 1
            sink._acked_total += 1
            done = self.ended and self.acked >= self.sent
        if done:
            sink._settle()

    def failed(self, error: ServiceError) -> None:
        with self.sink._lock:
            self.sink._acked_total += 1  # no longer in flight
        self.sink._error = error


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
        self._txs: OrderedDict[int, _TxDelivery] = OrderedDict()
        self._tx: _TxDelivery | None = None
        self._tx_callback: Any = None
        self._tx_ts_ms = 0
        self._error: ServiceError | None = None
        self._ack: Callable[[int], None] = lambda i: None
        self._current: TxBegin | None = None
        self._counts: dict[str, int] = {}
        self._stall_seconds = stall_seconds
        # Records sent (sink thread) and settled (acknowledged or failed, under
        # the lock); the difference is what is in flight. The stall check in
        # tick() needs no clock read per record.
        self._sent_total = 0
        self._acked_total = 0
        self._progress = (0, time.monotonic())  # (acked_total, when it last moved)
        self._topic_of: dict[tuple[str, str], str] = {}
        self._key_id_headers: dict[bytes, list[tuple[str, bytes]]] = {}
        self._tombstone_headers = [("cv-format", str(FORMAT_VERSION).encode())]
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
        now = time.monotonic()
        with self._lock:
            acked = self._acked_total
            waiting = self._sent_total - acked
        if acked != self._progress[0] or not waiting:
            self._progress = (acked, now)
            return
        idle = now - self._progress[1]
        if idle > self._stall_seconds:
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

    def _topic(self, schema: str, table: str) -> str:
        """The table's topic, created on first use; cached (encoding it costs per event)."""
        topic = self.topic_for(schema, table)
        if topic not in self._topics:
            self._ensure([(schema, table)])
        self._topic_of[(schema, table)] = topic
        return topic

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
        if self._error is not None:
            raise self._error
        if type(item) is EncodedEvent:  # the common case first
            self._event(item)
        elif isinstance(item, TxBegin):
            self._current = item
            self._counts = {}
            tx = _TxDelivery(self, item.index)
            self._tx = tx
            assert self._producer is not None, "open() first"
            self._tx_callback = self._producer.delivery_callback(tx)
            self._tx_ts_ms = int(item.commit_ts.timestamp() * 1000)
            with self._lock:
                self._txs[item.index] = tx
        elif isinstance(item, EncodedEvent):
            self._event(item)
        elif isinstance(item, TxEnd):
            self._tx_record(item)
            current = self._tx
            assert current is not None and current.index == item.index
            with self._lock:
                current.ended = True
                done = current.done
            if done:
                self._settle()

    def _event(self, item: EncodedEvent) -> None:
        ev = item.event
        topic = self._topic_of.get((ev.schema, ev.table)) or self._topic(ev.schema, ev.table)
        counts = self._counts
        counts[topic] = counts.get(topic, 0) + 1
        ts = self._tx_ts_ms
        op = ev.op
        if op == "t":
            reserved = self.hasher.reserved(ev.schema, ev.table, TRUNCATE_KEY_NAME)
            assert self._producer is not None
            for partition in sorted(self._producer.partitions_for(topic)):
                self._send(topic, reserved, item.envelope, ts, partition)
            return
        # The pipeline computed it once for every sink (None: compute it here).
        key = item.row_key or self.hasher.row_key(ev.schema, ev.table, ev.key or {})
        if op == "u":
            old_key_values = _old_key(ev.before, ev.key)
            if old_key_values is not None:
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
                self._send(topic, old_key, _dump(deleted), ts)
                self._send(topic, old_key, None, ts)
                self._send(topic, key, _dump(inserted), ts)
                return
        self._send(topic, key, item.envelope, ts)
        if op == "d":
            self._send(topic, key, None, ts)  # tombstone: compaction drops the key

    def _tx_record(self, end: TxEnd) -> None:
        assert self._current is not None
        doc = {
            "txid": self._current.txid,
            "position": end.position.text,
            "commit_ts": format_ts(end.commit_ts),
            "events": self._counts,
        }
        ts = int(end.commit_ts.timestamp() * 1000)
        self._send(self.tx_topic, None, _dump(doc), ts, partition=0)

    def _send(
        self,
        topic: str,
        key: bytes | None,
        plaintext: bytes | None,
        ts_ms: int,
        partition: int | None = None,
    ) -> None:
        tx = self._tx
        assert tx is not None
        if plaintext is None:
            value = None
            headers = self._tombstone_headers
        else:
            value = self.sealer.seal(plaintext, topic, key or b"")
            headers = self._headers(value)
        tx.sent += 1  # before produce: its callback may run at once
        self._sent_total += 1
        producer = self._producer
        assert producer is not None
        producer.produce(topic, key, value, headers, ts_ms, partition, self._tx_callback)

    def _headers(self, sealed: bytes) -> list[tuple[str, bytes]]:
        """cv-format and cv-key-id, one list per data key: the id is read from the
        sealed value's announcement, the same for every value sealed under that key."""
        # The format byte, the announcement's length and its head (which holds
        # the key id) decide the id, so they are the cache key.
        prefix = sealed[:_KEY_ID_PREFIX]
        headers = self._key_id_headers.get(prefix)
        if headers is None:
            headers = [*self._tombstone_headers, ("cv-key-id", peek_data_key_id(sealed).encode())]
            self._key_id_headers = {prefix: headers}  # one data key at a time
        return headers

    def _settle(self) -> None:
        """Acknowledge the gap-free prefix of fully delivered transactions."""
        last = None
        with self._lock:
            txs = self._txs
            while txs:
                index, state = next(iter(txs.items()))
                if not (state.ended and state.acked >= state.sent):
                    break
                txs.popitem(last=False)
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
