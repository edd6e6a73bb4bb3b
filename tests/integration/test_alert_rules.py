"""The alert rules, checked and unit-tested by promtool, and evaluated by a real
Prometheus server scraping a live agent endpoint.

Needs Debian's `prometheus` package (promtool and the server); `make test`
installs it through .ci/system-deps. A missing binary fails, never skips.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.http import HealthServer, Verdict
from agent.metrics import Metrics
from tests.servers.processes import free_port, spawn, tail, terminate, wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "alerts.yaml"
ALERT_TESTS = sorted((ROOT / "tests" / "alerts").glob("*.yaml"))
RUNBOOK = ROOT / "docs" / "alerts.md"
INSTALL_HINT = "install Debian's prometheus package (apt-get install prometheus)"


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return path


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


# --------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    result = run([binary("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert ALERT_TESTS, "no promtool tests under tests/alerts/"
    result = run([binary("promtool"), "test", "rules", *map(str, ALERT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in ALERT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - silent == set(), "alerts without a not-firing test"


def test_every_alert_is_documented_with_a_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for rule in alert_rules():
        notes = rule["annotations"]
        assert notes.get("summary") and notes.get("description"), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        url = notes["runbook_url"]
        assert url.endswith("docs/alerts.md#" + rule["alert"].lower()), url
        assert rule["alert"].lower() in anchors, f"docs/alerts.md has no section {rule['alert']}"


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: with the lag threshold raised, they do."""
    broken = ALERTS.read_text().replace(
        "changevault_source_lag_seconds > 300", "changevault_source_lag_seconds > 3000"
    )
    rules = tmp_path / "config" / "alerts.yaml"
    rules.parent.mkdir()
    rules.write_text(broken)
    tests = tmp_path / "tests" / "alerts"
    tests.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "alerts" / "pipeline_test.yaml", tests)
    result = subprocess.run(
        [binary("promtool"), "test", "rules", "pipeline_test.yaml"],
        capture_output=True, text=True, timeout=120, cwd=tests,
    )
    assert result.returncode != 0
    assert "ChangevaultLagHigh" in result.stdout + result.stderr


# ----------------------------------------------------- real Prometheus server


@dataclass
class AgentEndpoint:
    """A scrape target serving agent.http + agent.metrics.

    Today the sinks' state is a flag the test flips. When the daemon exists,
    this fixture becomes a running `changevault run` against kafka_broker, and
    `stop_sink()` becomes `kafka_broker.stop()` — the assertions stay.
    """

    address: str
    sinks: dict[str, bool] = field(default_factory=dict)

    def stop_sink(self, name: str) -> None:
        self.sinks[name] = False


@pytest.fixture
def agent_endpoint() -> Iterator[AgentEndpoint]:
    metrics = Metrics(captured_tables=["public.accounts"])
    endpoint = AgentEndpoint(address="", sinks={"kafka": True, "archive": True})
    metrics.bind_up(lambda: True)
    for name in endpoint.sinks:
        metrics.bind_sink_up(name, lambda name=name: endpoint.sinks[name])
    metrics.set_retention(35 * 86400)
    metrics.count_event("public.accounts", "u")
    server = HealthServer("127.0.0.1:0", metrics, lambda: Verdict(True, "ok"), lambda: True)
    with server:
        endpoint.address = f"127.0.0.1:{server.port}"
        yield endpoint


class PrometheusServer:
    """A private Prometheus: temp dir, free port, 1s scrape and evaluation."""

    def __init__(self, workdir: Path, target: str, rules: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        (workdir / "rules.yaml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [
                {"job_name": "changevault", "static_configs": [{"targets": [target]}]}
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        check = run([binary("promtool"), "check", "config", str(workdir / "prometheus.yml")])
        assert check.returncode == 0, check.stdout + check.stderr
        self._log = self.log_path.open("ab")
        self.process = spawn(
            [
                binary("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self._log,
        )
        wait_until(
            self._ready, timeout=60, what="prometheus", log_path=self.log_path,
            process=self.process,
        )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{query}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def wait_for(self, what: str, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prometheus: {what} not seen after {timeout:.0f}s; "
                    f"alerts={self.api('alerts')['alerts']}\nlog:\n{tail(self.log_path)}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, timeout=15)
        self._log.close()


def shortened_for(rules_text: str, alert: str, duration: str) -> str:
    """The rules with `for:` of one alert shortened, so a test sees it fire."""
    doc = yaml.safe_load(rules_text)
    found = False
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["for"] = duration
                found = True
    assert found, alert
    return str(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def prometheus(tmp_path: Path, agent_endpoint: AgentEndpoint) -> Iterator[PrometheusServer]:
    rules = shortened_for(ALERTS.read_text(), "ChangevaultSinkFailing", "3s")
    server = PrometheusServer(tmp_path, agent_endpoint.address, rules)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_sink_failing_alert_fires_in_a_real_prometheus(
    prometheus: PrometheusServer, agent_endpoint: AgentEndpoint
) -> None:
    prometheus.wait_for(
        "both sinks scraped as up",
        lambda: len(prometheus.query('changevault_sink_up{job="changevault"} == 1')) == 2,
    )
    # Healthy for a few evaluations: the alert stays inactive.
    time.sleep(5)
    assert prometheus.alerts("ChangevaultSinkFailing") == []

    agent_endpoint.stop_sink("kafka")

    def firing() -> bool:
        return any(
            a["state"] == "firing" and a["labels"].get("sink") == "kafka"
            for a in prometheus.alerts("ChangevaultSinkFailing")
        )

    prometheus.wait_for("ChangevaultSinkFailing{sink=kafka} firing", firing)
    alerts = prometheus.alerts("ChangevaultSinkFailing")
    assert {a["labels"]["sink"] for a in alerts} == {"kafka"}
    alert = alerts[0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "changevault sink kafka is failing"
    assert alert["annotations"]["runbook_url"].endswith("#changevaultsinkfailing")
