"""agent.metrics: names, types and HELP of CONTRACT.md, live values read at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import OTHER_TABLE, Metrics

# CONTRACT.md, section Metrics: scripts and dashboards depend on these names.
CONTRACT_METRICS = {
    "changevault_up",
    "changevault_events_total",
    "changevault_transactions_total",
    "changevault_source_lag_seconds",
    "changevault_source_behind_bytes",
    "changevault_checkpoint_timestamp_seconds",
    "changevault_sink_up",
    "changevault_sink_errors_total",
    "changevault_archive_bytes_total",
    "changevault_archive_segments_total",
    "changevault_last_snapshot_timestamp_seconds",
    "changevault_oldest_restorable_timestamp_seconds",
}

EXPECTED_TYPES = {
    "changevault_up": "gauge",
    "changevault_events": "counter",
    "changevault_transactions": "counter",
    "changevault_source_lag_seconds": "gauge",
    "changevault_source_behind_bytes": "gauge",
    "changevault_checkpoint_timestamp_seconds": "gauge",
    "changevault_sink_up": "gauge",
    "changevault_sink_errors": "counter",
    "changevault_archive_bytes": "counter",
    "changevault_archive_segments": "counter",
    "changevault_last_snapshot_timestamp_seconds": "gauge",
    "changevault_oldest_restorable_timestamp_seconds": "gauge",
    "changevault_sink_latency_seconds": "histogram",
    "changevault_reconnects": "counter",
    "changevault_snapshot_duration_seconds": "gauge",
    "changevault_snapshot_xmin_age": "gauge",
    "changevault_binlog_retention_margin_seconds": "gauge",
    "changevault_position_lost": "gauge",
    "changevault_statement_dml": "counter",
    "changevault_installed_timestamp_seconds": "gauge",
    "changevault_retention_seconds": "gauge",
}


def scrape(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def fully_bound() -> Metrics:
    m = Metrics(captured_tables=["public.customers"])
    m.bind_snapshot_xmin_age(lambda: 12.0)
    m.bind_binlog_retention_margin(lambda: 3600.0)
    m.bind_sink_up("kafka", lambda: True)
    m.count_reconnect("source")
    return m


def test_every_metric_has_the_expected_type_and_help() -> None:
    families = scrape(fully_bound())
    for name, kind in EXPECTED_TYPES.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        assert len(family.documentation) > 15, name


def test_every_contract_metric_is_exported() -> None:
    m = fully_bound()
    m.count_event("public.customers", "c")
    text = generate_latest(m.registry).decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert exported >= CONTRACT_METRICS, CONTRACT_METRICS - exported


def test_live_values_are_read_at_scrape_time() -> None:
    m = Metrics()
    state = {"lag": 1.5, "sink": True}
    m.bind_lag(lambda: state["lag"])
    m.bind_sink_up("archive", lambda: bool(state["sink"]))
    assert sample(m, "changevault_source_lag_seconds") == 1.5
    assert sample(m, "changevault_sink_up", sink="archive") == 1.0
    state.update(lag=42.0, sink=False)
    assert sample(m, "changevault_source_lag_seconds") == 42.0
    assert sample(m, "changevault_sink_up", sink="archive") == 0.0
    assert m.sinks_up() == {"archive": False}
    assert m.live_value("changevault_source_lag_seconds") == 42.0


def test_unbound_defaults_make_missing_wiring_visible() -> None:
    m = Metrics()
    assert sample(m, "changevault_up") == 0.0
    assert sample(m, "changevault_last_snapshot_timestamp_seconds") == 0.0
    # MySQL- and snapshot-only values are absent until a connector binds them.
    assert sample(m, "changevault_binlog_retention_margin_seconds") is None
    assert sample(m, "changevault_snapshot_xmin_age") is None


def test_a_failing_or_empty_probe_drops_only_its_sample() -> None:
    m = Metrics()
    m.bind_up(lambda: True)
    m.bind_lag(lambda: 1 / 0)
    m.bind_snapshot_xmin_age(lambda: None)
    m.bind_sink_up("kafka", lambda: 1 / 0 > 0)
    assert sample(m, "changevault_up") == 1.0
    assert sample(m, "changevault_source_lag_seconds") is None
    assert sample(m, "changevault_snapshot_xmin_age") is None
    assert sample(m, "changevault_sink_up", sink="kafka") == 0.0


def test_counters_move_through_explicit_methods() -> None:
    m = Metrics(captured_tables=["public.customers"])
    m.bind_sink_up("kafka", lambda: True)
    assert sample(m, "changevault_sink_errors_total", sink="kafka") == 0.0
    m.count_event("public.customers", "c", 3)
    m.count_event("public.customers", "u")
    m.count_transaction()
    m.count_sink_error("kafka")
    m.count_archive_segment(1000)
    m.count_archive_segment(24)
    m.count_reconnect("source")
    m.count_statement_dml(2)
    m.observe_sink_latency("kafka", 0.2)
    m.record_snapshot_duration(12.5)
    m.set_retention(35 * 86400)
    assert sample(m, "changevault_events_total", table="public.customers", op="c") == 3
    assert sample(m, "changevault_events_total", table="public.customers", op="u") == 1
    assert sample(m, "changevault_transactions_total") == 1
    assert sample(m, "changevault_sink_errors_total", sink="kafka") == 1
    assert sample(m, "changevault_archive_segments_total") == 2
    assert sample(m, "changevault_archive_bytes_total") == 1024
    assert sample(m, "changevault_reconnects_total", component="source") == 1
    assert sample(m, "changevault_statement_dml_total") == 2
    assert sample(m, "changevault_sink_latency_seconds_count", sink="kafka") == 1
    assert sample(m, "changevault_sink_latency_seconds_bucket", sink="kafka", le="0.25") == 1
    assert sample(m, "changevault_snapshot_duration_seconds") == 12.5
    assert sample(m, "changevault_retention_seconds") == 35 * 86400


def test_table_label_is_bounded_to_captured_tables() -> None:
    m = Metrics(captured_tables=["public.customers"])
    m.count_event("public.customers", "c")
    m.count_event("public.not_captured", "c")
    assert sample(m, "changevault_events_total", table=OTHER_TABLE, op="c") == 1
    assert sample(m, "changevault_events_total", table="public.not_captured", op="c") is None


def test_undeclared_tables_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.metrics.MAX_UNDECLARED_TABLES", 2)
    m = Metrics()
    for table in ("a.t1", "a.t2", "a.t3", "a.t1"):
        m.count_event(table, "d")
    assert sample(m, "changevault_events_total", table="a.t1", op="d") == 2
    assert sample(m, "changevault_events_total", table=OTHER_TABLE, op="d") == 1


def test_bad_op_and_unknown_live_name_are_refused() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="op"):
        m.count_event("public.customers", "x")
    with pytest.raises(ValueError, match="changevault_nope"):
        m.bind("changevault_nope", lambda: 1.0)


def test_two_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()
    a.count_transaction()
    assert sample(a, "changevault_transactions_total") == 1
    assert sample(b, "changevault_transactions_total") == 0
