"""agent.http: /metrics, /healthz and /readyz over a real socket."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import ConfigError, ServiceError
from agent.http import HealthServer, ProgressWatch, Verdict, parse_listen
from agent.metrics import Metrics


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_metrics_health_and_readiness_follow_live_state() -> None:
    metrics = Metrics()
    state = {"live": Verdict(True, "ok: idle"), "streaming": False, "kafka": True}
    metrics.bind_up(lambda: True)
    metrics.bind_lag(lambda: 7.0)
    metrics.bind_sink_up("kafka", lambda: bool(state["kafka"]))
    metrics.bind_sink_up("archive", lambda: True)
    server = HealthServer(
        "127.0.0.1:0", metrics, lambda: state["live"], lambda: bool(state["streaming"])
    )
    with server:
        assert server.port > 0
        status, ctype, body = get(server.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        assert samples[("changevault_up", ())] == 1.0
        assert samples[("changevault_source_lag_seconds", ())] == 7.0
        assert samples[("changevault_sink_up", (("sink", "kafka"),))] == 1.0

        status, ctype, body = get(server.url + "/metrics", "application/openmetrics-text")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n")

        assert get(server.url + "/healthz")[::2] == (200, "ok: idle\n")
        assert get(server.url + "/readyz")[::2] == (503, "not streaming\n")

        state["streaming"] = True
        status, _, body = get(server.url + "/readyz")
        assert status == 200 and "archive, kafka" in body

        state["kafka"] = False
        assert get(server.url + "/readyz")[::2] == (503, "sink down: kafka\n")

        state["live"] = Verdict(False, "no progress for 90s (limit 60s)")
        assert get(server.url + "/healthz")[::2] == (503, "no progress for 90s (limit 60s)\n")

        assert get(server.url + "/nope")[0] == 404
    with pytest.raises(RuntimeError):
        _ = server.port


def test_readiness_needs_a_sink_and_survives_a_failing_check() -> None:
    def broken() -> bool:
        raise OSError("boom")

    server = HealthServer("127.0.0.1:0", Metrics(), lambda: Verdict(True, "ok"), lambda: True)
    assert server.readiness() == Verdict(False, "no sinks registered")
    server = HealthServer("127.0.0.1:0", Metrics(), lambda: Verdict(True, "ok"), broken)
    assert server.readiness() == Verdict(False, "readiness check failed: OSError")


def test_progress_watch_goes_unhealthy_when_the_loop_stalls() -> None:
    clock = FakeClock()
    watch = ProgressWatch(stall_after=60, clock=clock)
    assert watch.verdict().ok
    clock.now += 59
    assert watch.verdict().ok
    clock.now += 2
    verdict = watch.verdict()
    assert not verdict.ok and "no progress for 61s" in verdict.reason
    watch.beat("heartbeat")
    assert watch.verdict() == Verdict(True, "ok: heartbeat 0.0s ago")


def test_listen_parsing_and_a_taken_port() -> None:
    assert parse_listen("127.0.0.1:9187") == ("127.0.0.1", 9187)
    assert parse_listen(":9187") == ("0.0.0.0", 9187)
    with pytest.raises(ConfigError, match="metrics_listen"):
        parse_listen("localhost")
    first = HealthServer("127.0.0.1:0", Metrics(), lambda: Verdict(True, "ok"), lambda: True)
    with first:
        second = HealthServer(
            f"127.0.0.1:{first.port}", Metrics(), lambda: Verdict(True, "ok"), lambda: True
        )
        with pytest.raises(ServiceError, match="cannot listen"):
            second.start()
