"""Every Prometheus metric of changevault, defined in one place.

`Metrics` owns its own `CollectorRegistry` (no global registry: tests and a
reloaded daemon can build as many as they like). Two kinds of values:

- Counters and histograms are advanced by the pipeline through small explicit
  methods (`count_event`, `count_archive_segment`, `observe_sink_latency`, ...).
- Gauges that describe live state (lag, retained log, checkpoint time, sink
  health, ...) are *bound* to callables that are read at scrape time, so the
  metric is the pipeline's own state and never a bookkeeping copy that can
  drift. A callable may return None to mean "no value right now"; that sample
  is then left out of the scrape. A callable that raises is logged and its
  sample left out, so one broken probe never breaks the whole scrape.

prometheus-client does all the exposition formatting.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LiveValue = Callable[[], float | None]
LiveFlag = Callable[[], bool]

OPS = ("c", "u", "d", "t", "r")
# Label value for events of tables outside the captured set: keeps the series
# count bounded even if a connector reports a table it should not have.
OTHER_TABLE = "_other"
# Upper bound on distinct table labels before `set_captured_tables` is called
# (the default table list, "all tables with a primary key", is only known once
# the source has connected).
MAX_UNDECLARED_TABLES = 500

# Commit -> durable latency: sub-second for Kafka, up to segment_max_age (10 s
# by default) and beyond for the archive, minutes when a sink is struggling.
# Fine around a quarter second: the commit -> Kafka-ack objective.
SINK_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0,
)  # fmt: skip


@dataclass(frozen=True)
class LiveGauge:
    """A gauge computed at scrape time; `default` is exported while unbound."""

    name: str
    help: str
    default: float | None  # None: not exported until bound


# Live gauges without labels. Defaults are chosen so that an unwired value is
# visible to the alerts (e.g. a last snapshot at 0 means "never", which fires
# ChangevaultNoRecentSnapshot) rather than silently healthy.
LIVE_GAUGES: tuple[LiveGauge, ...] = (
    LiveGauge("changevault_up", "1 while the agent is running its pipeline, else 0.", 0.0),
    LiveGauge(
        "changevault_source_lag_seconds",
        "Now minus the commit time of the oldest transaction not yet durable in every "
        "sink (0 when caught up).",
        0.0,
    ),
    LiveGauge(
        "changevault_source_behind_bytes",
        "Log bytes the source retains for us (PostgreSQL: WAL behind the slot's "
        "confirmed_flush_lsn; MySQL: binlog bytes after our position).",
        0.0,
    ),
    LiveGauge(
        "changevault_checkpoint_timestamp_seconds",
        "Unix time when the durable checkpoint last advanced (0: never).",
        0.0,
    ),
    LiveGauge(
        "changevault_last_snapshot_timestamp_seconds",
        "Unix time when the newest complete base snapshot in the archive finished (0: none).",
        0.0,
    ),
    LiveGauge(
        "changevault_oldest_restorable_timestamp_seconds",
        "Unix time of the oldest point the archive can restore to (its oldest complete "
        "snapshot; 0: none).",
        0.0,
    ),
    LiveGauge(
        "changevault_installed_timestamp_seconds",
        "Unix time when this archive was created (its first catalog entry); alerts about "
        "the restorable window are held off for one retention period after it (0: unknown).",
        0.0,
    ),
    LiveGauge(
        "changevault_position_lost",
        "1 when the source no longer has the position we need (slot lost, binlog purged); "
        "a new base snapshot is required.",
        0.0,
    ),
    LiveGauge(
        "changevault_snapshot_xmin_age",
        "PostgreSQL: age in transactions of the xmin held by a running snapshot (absent "
        "when no snapshot holds one).",
        None,
    ),
    LiveGauge(
        "changevault_binlog_retention_margin_seconds",
        "MySQL/MariaDB: seconds until the server's binlog expiry purges the file holding "
        "our position (expire setting minus that file's age; +Inf without expiry).",
        None,
    ),
)
_LIVE_NAMES = frozenset(g.name for g in LIVE_GAUGES)


class _LiveCollector(Collector):
    """Reads the bound callables at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, LiveValue] = {}
        self._sinks: dict[str, LiveFlag] = {}

    def bind(self, name: str, fn: LiveValue) -> None:
        with self._lock:
            self._values[name] = fn

    def bind_sink(self, sink: str, fn: LiveFlag) -> None:
        with self._lock:
            self._sinks[sink] = fn

    def unbind_sink(self, sink: str) -> None:
        with self._lock:
            self._sinks.pop(sink, None)

    def sinks_up(self) -> dict[str, bool]:
        with self._lock:
            sinks = dict(self._sinks)
        out: dict[str, bool] = {}
        for sink, fn in sorted(sinks.items()):
            value = _read(f"changevault_sink_up{{sink={sink!r}}}", fn)
            out[sink] = bool(value) if value is not None else False
        return out

    def value(self, name: str) -> float | None:
        with self._lock:
            fn = self._values.get(name)
        if fn is None:
            return next(g.default for g in LIVE_GAUGES if g.name == name)
        return _read(name, fn)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering a collector calls describe() to check for duplicate names;
        # answering with empty families avoids calling every probe at that time.
        for gauge in LIVE_GAUGES:
            yield GaugeMetricFamily(gauge.name, gauge.help)
        yield GaugeMetricFamily("changevault_sink_up", _SINK_UP_HELP, labels=["sink"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for gauge in LIVE_GAUGES:
            family = GaugeMetricFamily(gauge.name, gauge.help)
            value = self.value(gauge.name)
            if value is not None:
                family.add_metric([], value)
            yield family
        sink_up = GaugeMetricFamily("changevault_sink_up", _SINK_UP_HELP, labels=["sink"])
        for sink, up in self.sinks_up().items():
            sink_up.add_metric([sink], 1.0 if up else 0.0)
        yield sink_up


_SINK_UP_HELP = "1 while the sink accepts and makes data durable, else 0."


def _read(name: str, fn: Callable[[], float | bool | None]) -> float | None:
    try:
        value = fn()
    except Exception:
        # A probe must not take the whole scrape down; the gap in the series is
        # itself visible, and the log says why.
        log.exception("metric %s: live value could not be read", name)
        return None
    if value is None:
        return None
    return float(value)


class Metrics:
    """The agent's metrics; one instance per process, passed in explicitly."""

    def __init__(self, captured_tables: Collection[str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._live = _LiveCollector()
        self.registry.register(self._live)
        self._tables_lock = threading.Lock()
        self._captured: frozenset[str] | None = None
        self._seen_tables: set[str] = set()
        if captured_tables is not None:
            self.set_captured_tables(captured_tables)

        r = self.registry
        self._events = Counter(
            "changevault_events",
            "Change events captured, by table (schema.table) and op (c, u, d, t, r).",
            ["table", "op"],
            registry=r,
        )
        self._transactions = Counter(
            "changevault_transactions", "Source transactions captured.", registry=r
        )
        self._sink_errors = Counter(
            "changevault_sink_errors",
            "Errors a sink reported (each failed write or flush attempt).",
            ["sink"],
            registry=r,
        )
        self._archive_bytes = Counter(
            "changevault_archive_bytes",
            "Bytes of sealed segments written to the archive.",
            registry=r,
        )
        self._archive_segments = Counter(
            "changevault_archive_segments",
            "Sealed segments written to the archive.",
            registry=r,
        )
        self._reconnects = Counter(
            "changevault_reconnects",
            "Reconnects after a lost connection, by component (source, kafka, archive, ...).",
            ["component"],
            registry=r,
        )
        self._snapshot_failures = Counter(
            "changevault_snapshot_failures",
            "Base snapshots that failed or were interrupted (retried with backoff).",
            registry=r,
        )
        self._statement_dml = Counter(
            "changevault_statement_dml",
            "MySQL/MariaDB: DML seen as statement-based binlog events, which cannot be "
            "captured row by row (binlog_format must be ROW).",
            registry=r,
        )
        self._sink_latency = Histogram(
            "changevault_sink_latency_seconds",
            "Time from source commit to durable in the sink.",
            ["sink"],
            buckets=SINK_LATENCY_BUCKETS,
            registry=r,
        )
        self._snapshot_duration = Gauge(
            "changevault_snapshot_duration_seconds",
            "Duration of the last completed base snapshot.",
            registry=r,
        )
        self._retention = Gauge(
            "changevault_retention_seconds",
            "The configured retention: how far back the archive must stay restorable.",
            registry=r,
        )

    # ----------------------------------------------------------- live gauges

    def bind(self, name: str, fn: LiveValue) -> None:
        """Compute the live gauge `name` by calling `fn` at each scrape."""
        if name not in _LIVE_NAMES:
            raise ValueError(f"expected one of {sorted(_LIVE_NAMES)}, found {name!r}")
        self._live.bind(name, fn)

    def bind_up(self, fn: LiveFlag) -> None:
        self.bind("changevault_up", lambda: 1.0 if fn() else 0.0)

    def bind_lag(self, fn: LiveValue) -> None:
        self.bind("changevault_source_lag_seconds", fn)

    def bind_behind_bytes(self, fn: LiveValue) -> None:
        self.bind("changevault_source_behind_bytes", fn)

    def bind_checkpoint_timestamp(self, fn: LiveValue) -> None:
        self.bind("changevault_checkpoint_timestamp_seconds", fn)

    def bind_last_snapshot_timestamp(self, fn: LiveValue) -> None:
        self.bind("changevault_last_snapshot_timestamp_seconds", fn)

    def bind_oldest_restorable_timestamp(self, fn: LiveValue) -> None:
        self.bind("changevault_oldest_restorable_timestamp_seconds", fn)

    def bind_installed_timestamp(self, fn: LiveValue) -> None:
        self.bind("changevault_installed_timestamp_seconds", fn)

    def bind_position_lost(self, fn: LiveFlag) -> None:
        self.bind("changevault_position_lost", lambda: 1.0 if fn() else 0.0)

    def bind_snapshot_xmin_age(self, fn: LiveValue) -> None:
        self.bind("changevault_snapshot_xmin_age", fn)

    def bind_binlog_retention_margin(self, fn: LiveValue) -> None:
        self.bind("changevault_binlog_retention_margin_seconds", fn)

    def bind_sink_up(self, sink: str, fn: LiveFlag) -> None:
        """Register a sink; /readyz and changevault_sink_up{sink} read `fn`.

        Also exports the sink's error counter and latency histogram at zero, so
        `increase()` in the alert rules sees the very first error.
        """
        self._live.bind_sink(sink, fn)
        self._sink_errors.labels(sink)
        self._sink_latency.labels(sink)

    def unbind_sink(self, sink: str) -> None:
        self._live.unbind_sink(sink)

    def sinks_up(self) -> dict[str, bool]:
        """Every registered sink and whether it is up right now."""
        return self._live.sinks_up()

    def live_value(self, name: str) -> float | None:
        """The current value of a live gauge, as a scrape would see it (for status)."""
        if name not in _LIVE_NAMES:
            raise ValueError(f"expected one of {sorted(_LIVE_NAMES)}, found {name!r}")
        return self._live.value(name)

    # --------------------------------------------------------------- config

    def set_captured_tables(self, tables: Collection[str]) -> None:
        """Declare the captured tables (schema.table); others count as `_other`."""
        with self._tables_lock:
            self._captured = frozenset(tables)

    def set_retention(self, seconds: float) -> None:
        self._retention.set(seconds)

    # ----------------------------------------------------- pipeline counters

    def count_event(self, table: str, op: str, n: int = 1) -> None:
        """`n` events of `op` on `table` (schema.table) were captured."""
        if op not in OPS:
            raise ValueError(f"expected an op in {OPS}, found {op!r}")
        self._events.labels(self._table_label(table), op).inc(n)

    def count_transaction(self, n: int = 1) -> None:
        self._transactions.inc(n)

    def count_sink_error(self, sink: str) -> None:
        self._sink_errors.labels(sink).inc()

    def count_archive_segment(self, nbytes: int) -> None:
        """A sealed segment of `nbytes` bytes is durable in the archive."""
        self._archive_segments.inc()
        self._archive_bytes.inc(nbytes)

    def count_reconnect(self, component: str) -> None:
        self._reconnects.labels(component).inc()

    def count_snapshot_failure(self) -> None:
        self._snapshot_failures.inc()

    def count_statement_dml(self, n: int = 1) -> None:
        self._statement_dml.inc(n)

    def observe_sink_latency(self, sink: str, seconds: float) -> None:
        """A transaction committed `seconds` ago became durable in `sink`."""
        if math.isfinite(seconds):
            self._sink_latency.labels(sink).observe(max(seconds, 0.0))

    def record_snapshot_duration(self, seconds: float) -> None:
        self._snapshot_duration.set(seconds)

    def _table_label(self, table: str) -> str:
        with self._tables_lock:
            if self._captured is not None:
                return table if table in self._captured else OTHER_TABLE
            if table in self._seen_tables:
                return table
            if len(self._seen_tables) >= MAX_UNDECLARED_TABLES:
                return OTHER_TABLE
            self._seen_tables.add(table)
            return table
