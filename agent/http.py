"""The agent's small HTTP endpoint: /metrics, /healthz and /readyz.

- /metrics: the `Metrics` registry, formatted by prometheus-client (text or
  OpenMetrics, as the scraper asks).
- /healthz: 200 while the pipeline makes progress or is idle and healthy
  (the supplied `liveness` callable decides; see `ProgressWatch`), else 503.
  Kubernetes restarts the pod on it, so it must only fail when a restart helps.
- /readyz: 200 while the agent is streaming and every registered sink is up,
  else 503. Readiness reads the same sink callables as changevault_sink_up.

Every answer has a one-line plain-text body saying why. The server runs in
its own daemon thread (stdlib ThreadingHTTPServer); `port=0` binds a free port
and `port` tells which.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder

from agent.errors import ConfigError, ServiceError
from agent.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """A health answer and the reason behind it (the response body)."""

    ok: bool
    reason: str


class ProgressWatch:
    """Liveness from loop progress: healthy while `beat()` was called recently.

    The daemon loop calls `beat()` every time it gets through an iteration
    (an event, a heartbeat from the source, or an idle timeout all count), so
    an idle but working pipeline stays healthy while a stuck loop — blocked
    on a lock, a hung socket without timeout — goes unhealthy after
    `stall_after` seconds. The same verdict gates the systemd watchdog.
    """

    def __init__(self, stall_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        if stall_after <= 0:
            raise ValueError(f"expected stall_after > 0, found {stall_after}")
        self._stall_after = stall_after
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._what = "starting"

    def beat(self, what: str = "progress") -> None:
        with self._lock:
            self._last = self._clock()
            self._what = what

    def verdict(self) -> Verdict:
        with self._lock:
            age = self._clock() - self._last
            what = self._what
        if age > self._stall_after:
            return Verdict(False, f"no progress for {age:.0f}s (limit {self._stall_after:.0f}s)")
        return Verdict(True, f"ok: {what} {age:.1f}s ago")


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9187` -> ("127.0.0.1", 9187); `:9187` listens on every interface."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics_listen: expected host:port, found {listen!r}")
    return (host or "0.0.0.0", int(port))  # noqa: S104 - an empty host asks for all


class HealthServer:
    """Serves /metrics, /healthz and /readyz on `listen` from a daemon thread."""

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        liveness: Callable[[], Verdict],
        streaming: Callable[[], bool],
    ) -> None:
        self._address = parse_listen(listen)
        self._metrics = metrics
        self._liveness = liveness
        self._streaming = streaming
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ verdicts

    def health(self) -> Verdict:
        try:
            return self._liveness()
        except Exception as exc:
            log.exception("liveness check failed")
            return Verdict(False, f"liveness check failed: {type(exc).__name__}")

    def readiness(self) -> Verdict:
        try:
            streaming = self._streaming()
        except Exception as exc:
            log.exception("readiness check failed")
            return Verdict(False, f"readiness check failed: {type(exc).__name__}")
        if not streaming:
            return Verdict(False, "not streaming")
        sinks = self._metrics.sinks_up()
        if not sinks:
            return Verdict(False, "no sinks registered")
        down = [name for name, up in sinks.items() if not up]
        if down:
            return Verdict(False, "sink down: " + ", ".join(down))
        return Verdict(True, "ok: streaming; sinks up: " + ", ".join(sinks))

    # ----------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._address[0]
        if host in ("0.0.0.0", ""):  # noqa: S104
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            server = ThreadingHTTPServer(self._address, _handler_for(self))
        except OSError as exc:
            host, port = self._address
            raise ServiceError(
                f"metrics_listen: cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="changevault-http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s", self.url)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "changevault"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                self._verdict(owner.health())
            elif path == "/readyz":
                self._verdict(owner.readiness())
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _metrics(self) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(owner._metrics.registry)
            except Exception:
                log.exception("/metrics could not be rendered")
                self._send(500, b"metrics could not be rendered; see the agent log\n")
                return
            self._send(200, body, content_type)

        def _verdict(self, verdict: Verdict) -> None:
            self._send(200 if verdict.ok else 503, verdict.reason.encode() + b"\n")

        def _send(
            self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit these endpoints every few seconds; keep them out of
            # the agent's log unless debugging.
            log.debug("http %s " + format, self.address_string(), *args)

    return Handler
