"""End-to-end capture (PG -> sealed -> Kafka + archive, durable) with the real agent,
the producer ceiling, commit -> Kafka latency and peak RSS through one big transaction."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from agent.settings import KafkaSettings
from bench import histogram, workload
from bench.agent_runs import (
    AgentRun,
    dir_bytes,
    drop_agent_run,
    new_agent_run,
    peak_rss_mb,
    wait_checkpoint,
)
from bench.sampling_profile import AgentProfile
from bench.servers import BenchServers
from connectors.kafka import TopicAdmin, table_topic, topic_specs
from connectors.kafka.producer_factory import make_producer
from connectors.kafka.topic_names import transactions_topic


@dataclass
class CaptureRun:
    producer: str
    changes: int
    seconds: float
    archive_bytes: int
    peak_rss_mb: float | None
    value_sizes: list[int]
    profile: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.changes / self.seconds


def measure_capture(servers: BenchServers, name: str, producer: str, n_tx: int,
                    profile: bool = False) -> CaptureRun:
    """The agent runs caught up; the workload is committed; time until the checkpoint
    (every sink durable) passes its end. Starts with the workload, so no process start."""
    run = new_agent_run(servers, name, producer)
    try:
        run.start()
        archive_before = dir_bytes(run.archive)
        sampler = AgentProfile(run.pid, run.state.parent / "py-spy.raw") if profile else None
        with servers.pg.connect(run.dbname) as conn:
            started = time.monotonic()
            workload.run_mixed(conn, 0, n_tx)
            end = workload.current_lsn(conn)
        finished = wait_checkpoint(run, end, timeout=3600, poll=0.05)
        frames = sampler.stop() if sampler is not None else None
        rss = peak_rss_mb(run.pid)
        run.stop()
        sizes = sample_value_sizes(run)
        return CaptureRun(producer, n_tx * workload.ROWS_PER_TX, finished - started,
                          dir_bytes(run.archive) - archive_before, rss, sizes, frames)
    finally:
        drop_agent_run(servers, run)


def sample_value_sizes(run: AgentRun, limit: int = 2000) -> list[int]:
    """Sizes of the first sealed values the agent wrote to the table topic."""
    from confluent_kafka import Consumer, TopicPartition

    topic = table_topic(run.kafka["topic_prefix"], run.dbname, "public", workload.TABLE)
    consumer = Consumer({"bootstrap.servers": run.kafka["bootstrap_servers"][0],
                         "group.id": f"bench-{run.name}", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        sizes: list[int] = []
        deadline = time.monotonic() + 30
        while len(sizes) < limit and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                value = msg.value() if msg.error() is None else None
                if value is not None:
                    sizes.append(len(value))
        return sizes
    finally:
        consumer.close()


def producer_ceiling(servers: BenchServers, producer: str, messages: int, value_size: int,
                     name: str) -> float:
    """Rows/s of the bare producer backend sending pre-sealed-size messages (one per row),
    acks=all + idempotence + the sink's compression, to a fresh compacted topic."""
    import os

    settings = KafkaSettings.model_validate({
        "bootstrap_servers": [servers.kafka.bootstrap], "topic_prefix": name,
        "replication_factor": 1, "min_insync_replicas": 1, "producer": producer})
    specs = topic_specs(settings, "bench", [("public", "ceiling")], timedelta(days=1))
    admin = TopicAdmin(settings)
    admin.ensure_topics(specs)
    admin.close()
    topic = specs[0].name
    # Sealed values are ciphertext: random bytes compress like them (not at all).
    values = [os.urandom(value_size) for _ in range(64)]
    keys = [os.urandom(32) for _ in range(4096)]
    headers = [("cv-format", b"1"), ("cv-key-id", b"0123456789abcdef")]
    prod: Any = make_producer(settings)
    tracker = _CountingTracker()
    try:
        # The backend's cheapest path (what the sink uses): one delivery
        # callback shared by every record, no future per record.
        callback = prod.delivery_callback(tracker)
        started = time.monotonic()
        ts = int(time.time() * 1000)
        for i in range(messages):
            prod.produce(topic, keys[i % len(keys)], values[i % len(values)], headers, ts, None,
                         callback)
        prod.flush(600)
        elapsed = time.monotonic() - started
        if tracker.delivered_count != messages:
            raise RuntimeError(f"producer ceiling: {tracker.delivered_count} of {messages} "
                               f"acknowledged ({tracker.errors[:1]})")
        return messages / elapsed
    finally:
        prod.close(10)


def _kafka_ack_buckets(run: AgentRun) -> dict[float, float]:
    return histogram.scrape_buckets(run.metrics_port, "changevault_sink_latency_seconds",
                                    'sink="kafka"')


class _CountingTracker:
    def __init__(self) -> None:
        self.delivered_count = 0
        self.errors: list[str] = []

    def delivered(self) -> None:
        self.delivered_count += 1  # one delivery-report thread at a time here

    def failed(self, error: Exception) -> None:
        self.errors.append(str(error))


@dataclass
class LatencyRun:
    rate_rows_per_s: float
    seconds: float
    committed: int
    latencies_ms: list[float]  # consumer-seen, one per transaction record received
    ack_buckets: dict[float, float]  # the agent's commit -> Kafka-ack histogram, this load only

    def percentile(self, q: float) -> float | None:
        """Commit -> Kafka ack in ms, from the agent's own histogram
        (changevault_sink_latency_seconds{sink="kafka"}), over every committed
        transaction; one never acknowledged is infinitely late (None)."""
        seconds = histogram.quantile(q, self.ack_buckets, self.committed)
        return None if seconds is None else seconds * 1000

    def seen_percentile(self, q: float) -> float | None:
        """Commit -> seen by a consumer, ms: adds the broker's fetch path (tansu's
        grows with the topic) to the ack."""
        if not self.committed:
            return None
        rank = min(self.committed - 1, int(q * self.committed))
        ordered = sorted(self.latencies_ms)
        return ordered[rank] if rank < len(ordered) else None


def measure_latency(servers: BenchServers, name: str, producer: str, seconds: float,
                    rows_per_s: int = 10_000, drain_s: float = 30) -> LatencyRun:
    """Commit mixed 100-row transactions at a steady rate. Commit -> Kafka ack comes
    from the agent's own per-sink histogram (what an operator's histogram_quantile
    sees); beside it a consumer on <prefix>.transactions records when it sees each
    transaction's record minus its commit time (the record timestamp)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    run = new_agent_run(servers, name, producer)
    latencies: list[float] = []
    stop = threading.Event()
    try:
        run.start()
        consumer = Consumer({"bootstrap.servers": servers.kafka.bootstrap,
                             "group.id": f"bench-{name}", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 5})
        # Start at the topic's current end as a concrete offset: the logical
        # OFFSET_END is resolved only at the first fetch, which came after the
        # first ~0.5 s of the load, so those transactions were never seen and
        # counted as infinitely late.
        # (The consumer may not know the topic yet: ask until it does.)
        partition = TopicPartition(transactions_topic(run.kafka["topic_prefix"]), 0)
        deadline = time.monotonic() + 60
        while True:
            try:
                # A metadata request for the topic: librdkafka does not refresh
                # an unknown topic's metadata for get_watermark_offsets alone.
                consumer.list_topics(partition.topic, timeout=5)
                _low, high = consumer.get_watermark_offsets(partition, timeout=10)
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        consumer.assign([TopicPartition(partition.topic, 0, high)])

        def consume() -> None:
            while not stop.is_set():
                for msg in consumer.consume(1000, timeout=0.1):
                    now_ms = time.time() * 1000
                    if msg.error() is None:
                        latencies.append(now_ms - msg.timestamp()[1])

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        time.sleep(1.0)  # the consumer has its position before the first commit
        acks_before = _kafka_ack_buckets(run)
        interval = workload.ROWS_PER_TX / rows_per_s
        with servers.pg.connect(run.dbname) as conn:
            started = time.monotonic()
            tx = 0
            while (now := time.monotonic()) - started < seconds:
                due = started + tx * interval
                if due > now:
                    time.sleep(due - now)
                conn.execute("CALL bench_mixed(%s, 1)", (tx,))
                tx += 1
            elapsed = time.monotonic() - started
            end = workload.current_lsn(conn)
        del end  # an agent that cannot keep up is not waited for beyond drain_s
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            acks = histogram.delta(_kafka_ack_buckets(run), acks_before)
            if len(latencies) >= tx and acks[math.inf] >= tx:
                break
            time.sleep(0.2)
        stop.set()
        reader.join()
        consumer.close()
        return LatencyRun(tx * workload.ROWS_PER_TX / elapsed, elapsed, tx, latencies, acks)
    finally:
        stop.set()
        drop_agent_run(servers, run)
