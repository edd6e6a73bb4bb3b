"""Helpers for the fault and hostile-input suites: a steady load with a ground
truth, checks of what the agent delivered, metrics and nonce inspection."""

from __future__ import annotations

import json
import random
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from agent.crypto.datakeys import DataKeyAnnouncement
from agent.crypto.messages import FORMAT_VERSION, NONCE_BYTES
from agent.settings import KafkaSettings
from tests.e2e.agent_process import AgentProcess, cli, wait_for

Op = tuple[str, str, int]  # (table, op, key id)

SCHEMA_SQL = (
    "CREATE TABLE items (id bigint PRIMARY KEY, val int NOT NULL, note text)",
    "CREATE TABLE ledger (seq bigint PRIMARY KEY, rows int NOT NULL)",
)


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def checkpoint_doc(state: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((state / "checkpoint.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc


def checkpoint_lsn(state: Path) -> int | None:
    doc = checkpoint_doc(state)
    return None if doc is None else lsn_int(doc["position"]["text"])


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return lsn_int(row[0])


def wait_caught_up(dsn: str, state: Path, timeout: float = 90) -> None:
    """Until the checkpoint passes everything committed so far."""
    end = current_lsn(dsn)
    wait_for(lambda: (cp := checkpoint_lsn(state)) is not None and cp >= end, timeout,
             "checkpoint past the workload")


def drain_and_stop(agent: AgentProcess, dsn: str, state: Path, timeout: float = 90) -> int:
    wait_caught_up(dsn, state, timeout)
    return agent.stop()


# ------------------------------------------------------------------ workload


@dataclass
class Workload:
    """One writer thread: multi-row transactions of inserts, updates and deletes
    on `items`, plus a `ledger` row numbering each transaction. `committed`
    holds the ops of every committed transaction in commit order (one writer,
    so commit order is program order) — the ground truth."""

    dsn: str
    pause: float = 0.02
    seed: int = 7
    committed: list[list[Op]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Workload:
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[list[Op]]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        if self.error is not None:
            raise AssertionError(f"workload failed: {self.error!r}") from self.error
        return self.committed

    def run_for(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        live: list[int] = []
        next_id = 1
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    ops: list[Op] = []
                    born: list[int] = []
                    gone: set[int] = set()
                    with conn.transaction():
                        for _ in range(rng.randint(1, 4)):
                            conn.execute("INSERT INTO items VALUES (%s, %s, %s)",
                                         (next_id, 0, f"row {next_id}"))
                            ops.append(("items", "c", next_id))
                            born.append(next_id)
                            next_id += 1
                        for k in rng.sample(live, min(len(live), rng.randint(0, 3))):
                            if rng.random() < 0.25:
                                conn.execute("DELETE FROM items WHERE id = %s", (k,))
                                ops.append(("items", "d", k))
                                gone.add(k)
                            else:
                                conn.execute("UPDATE items SET val = val + 1 WHERE id = %s", (k,))
                                ops.append(("items", "u", k))
                        seq = len(self.committed) + 1
                        conn.execute("INSERT INTO ledger VALUES (%s, %s)", (seq, len(ops)))
                        ops.append(("ledger", "c", seq))
                    self.committed.append(ops)
                    live = [k for k in live if k not in gone] + born
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc


def create_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in SCHEMA_SQL:
            conn.execute(stmt)


def table_state(dsn: str) -> dict[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {int(r[0]): int(r[1]) for r in conn.execute("SELECT id, val FROM items")}


# ------------------------------------------------------------------ results


def change_ops(history: list[dict[str, Any]]) -> list[Op]:
    """(table, op, key) of every change event, deduplicated by id (first kept),
    asserting that a redelivered id carries the same event."""
    seen: dict[str, dict[str, Any]] = {}
    out: list[Op] = []
    for e in history:
        if e["op"] == "r":
            continue
        prev = seen.get(e["id"])
        if prev is not None:
            assert prev == e, f"id {e['id']} delivered twice with different content"
            continue
        seen[e["id"]] = e
        key = e["key"]["id"] if e["source"]["table"] == "items" else e["key"]["seq"]
        out.append((e["source"]["table"], e["op"], int(key)))
    return out


def fold_items(history: list[dict[str, Any]]) -> dict[int, int]:
    """The `items` table rebuilt from a replayable history (snapshot + changes)."""
    rows: dict[int, int] = {}
    seen: set[str] = set()
    for e in history:
        if e["id"] in seen or e["source"]["table"] != "items":
            continue
        seen.add(e["id"])
        if e["op"] == "d":
            rows.pop(int(e["key"]["id"]), None)
        else:
            rows[int(e["after"]["id"])] = int(e["after"]["val"])
    return rows


def assert_exactly(committed: list[list[Op]], delivered: list[Op], where: str) -> None:
    expected = [op for tx in committed for op in tx]
    if delivered == expected:
        return
    missing = [op for op in expected if op not in set(delivered)]
    extra = [op for op in delivered if op not in set(expected)]
    raise AssertionError(
        f"{where}: {len(delivered)} changes delivered, {len(expected)} committed; "
        f"missing {missing[:5]}, unexpected {extra[:5]}, "
        f"first difference at {next((i for i, (a, b) in enumerate(zip(expected, delivered, strict=False)) if a != b), min(len(expected), len(delivered)))}"
    )


def read_events(config: Path, keys: dict[str, Path], *extra: str,
                env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    proc = cli(["events", "-c", str(config), "--private-key", str(keys["archive.key"]), *extra],
               env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------ nonces


def kafka_settings(bootstrap: str, prefix: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=[bootstrap], topic_prefix=prefix,
                         replication_factor=1, min_insync_replicas=1)


def raw_kafka_values(ks: KafkaSettings) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(topic, key, sealed value) of every non-tombstone record under the prefix."""
    from connectors.kafka.admin import TopicAdmin
    from connectors.kafka.consumer import read_topics

    admin = TopicAdmin(ks)
    try:
        topics = sorted(t for t in admin.list_topics() if t.startswith(ks.topic_prefix + "."))
    finally:
        admin.close()
    for rec in read_topics(ks, topics):
        if rec.value is not None:
            yield rec.topic, rec.key, rec.value


def split_sealed(value: bytes) -> tuple[DataKeyAnnouncement, bytes]:
    """(announcement, nonce) of a sealed Kafka value (format of agent/crypto/messages.py)."""
    assert value[0] == FORMAT_VERSION
    (n,) = struct.unpack_from(">I", value, 1)
    announcement = DataKeyAnnouncement.from_bytes(value[5 : 5 + n])
    return announcement, value[5 + n : 5 + n + NONCE_BYTES]


@dataclass
class NonceReport:
    messages: int
    data_keys: set[str]
    agents: set[str]


def assert_no_nonce_reuse(values: list[bytes]) -> NonceReport:
    """No (data key id, nonce) pair seals two different ciphertexts."""
    by_pair: dict[tuple[str, bytes], bytes] = {}
    keys: set[str] = set()
    agents: set[str] = set()
    for value in values:
        ann, nonce = split_sealed(value)
        keys.add(ann.key_id)
        agents.add(ann.agent_id)
        prev = by_pair.setdefault((ann.key_id, nonce), value)
        assert prev == value, f"data key {ann.key_id} nonce {nonce.hex()} used for two messages"
    return NonceReport(len(values), keys, agents)


def segment_stream_ids(archive_dir: Path) -> list[tuple[str, bytes]]:
    """(data key id, stream salt) of every sealed archive object in a file:// archive."""
    from agent.archive.segment import read_header
    from agent.crypto.stream import HEADER_BYTES

    out = []
    for path in sorted(archive_dir.rglob("*")):
        if not path.is_file() or path.suffix not in (".seg", ".idx", ".snap"):
            continue
        with path.open("rb") as f:
            header = read_header(f, str(path))
            stream_header = f.read(HEADER_BYTES)
        key_id = DataKeyAnnouncement.from_bytes(header.announcement).key_id
        out.append((key_id, stream_header[9:25]))  # magic 4, version 1, chunk size 4, salt 16
    return out


# ------------------------------------------------------------------ metrics


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def metric(text: str, name: str, labels: str = "") -> float | None:
    """Value of `name{labels}` in Prometheus text, e.g. metric(t, "changevault_sink_up", 'sink="kafka"')."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == want:
            return float(value)
    return None


# ------------------------------------------------------------------ password auth


PASSWORD_ROLE = "cv_pw_user"


def require_password(server: Any, password: str) -> str:
    """Create a role that must log in with SCRAM (pg_hba) on `server`; returns
    its DSN without the password. Other users keep trust auth."""
    from psycopg import sql

    server.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER REPLICATION PASSWORD {}").format(
        sql.Identifier(PASSWORD_ROLE), sql.Literal(password)))
    hba = Path(server.data_dir) / "pg_hba.conf"
    rules = (f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
             f"host replication {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n")
    hba.write_text(rules + hba.read_text())
    server.execute("SELECT pg_reload_conf()")
    return f"postgresql://{PASSWORD_ROLE}@{server.host}:{server.port}/postgres"


def start_with_metrics(write_config_for: Callable[[int], Path], log: Path,
                       env: dict[str, str] | None = None) -> tuple[AgentProcess, int]:
    """Start the agent with metrics on a free port; another process may grab the
    port between choosing and binding it, so try again with a new one."""
    from tests.servers.processes import free_port

    for _attempt in range(3):
        port = free_port()
        agent = AgentProcess(write_config_for(port), log, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not agent.alive():
                break
            try:
                scrape(port)
                return agent, port
            except OSError:
                time.sleep(0.2)
        agent.stop()
        if "Address already in use" not in agent.log():
            raise AssertionError(f"agent did not serve /metrics: {agent.log()[-2000:]}")
    raise AssertionError("no free port for the metrics server after 3 attempts")


# ------------------------------------------------------------------ one-line errors


def one_error_line(proc: Any, code: int) -> str:
    """The single `changevault: ...` line of a failed command (log lines aside),
    after checking the exit code and that no traceback was printed."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, (proc.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("changevault:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return str(lines[0])


# ------------------------------------------------------------------ slot loss


def slot_wal_status(dsn: str, slot: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
    return None if row is None else row[0]


def invalidate_slot(server: Any, dsn: str, slot: str, attempts: int = 60) -> None:
    """Write and switch WAL segments with CHECKPOINTs until the slot, held
    back beyond max_slot_wal_keep_size, is invalidated (wal_status = 'lost')."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(attempts):
            conn.execute("INSERT INTO ledger VALUES (%s, 0) ON CONFLICT DO NOTHING", (-1000 - i,))
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            if slot_wal_status(dsn, slot) == "lost":
                return
    raise AssertionError(f"slot {slot} still not lost after {attempts} WAL switches: "
                         f"{slot_wal_status(dsn, slot)}")


# ------------------------------------------------------------------ S3 errors


class FaultyS3Proxy:
    """An HTTP proxy in front of an S3 endpoint that answers errors for some
    requests: every `put_every`-th PUT and `get_every`-th GET fail (PUTs
    alternately before reaching the store with 503 and after it with 500, so
    that a create has landed although its answer says otherwise); while
    `burst` is set, every PUT fails, long enough to exhaust the client's retries."""

    def __init__(self, upstream: str, put_every: int = 3, get_every: int = 4) -> None:
        import http.client
        import http.server
        from urllib.parse import urlsplit

        up = urlsplit(upstream)
        self.put_every, self.get_every = put_every, get_every
        self.burst = threading.Event()
        self.counts = {"PUT": 0, "GET": 0}
        self.failed = {"before": 0, "after": 0}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                verdict = proxy._verdict(self.command)
                if verdict == "before":
                    return self._error(503, "SlowDown")
                conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in ("expect", "connection"):
                            conn.putheader(name, value)
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if verdict == "after":
                    return self._error(500, "InternalError")
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int, code: str) -> None:
                data = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>injected by the test proxy</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _verdict(self, method: str) -> str | None:
        with self._lock:
            if method == "PUT" and self.burst.is_set():
                self.failed["before"] += 1
                return "before"
            if method not in self.counts:
                return None
            self.counts[method] += 1
            n = self.counts[method]
            if method == "PUT" and n % self.put_every == 0:
                verdict = "after" if (n // self.put_every) % 2 == 0 else "before"
            elif method == "GET" and n % self.get_every == 0:
                verdict = "before"
            else:
                return None
            self.failed[verdict] += 1
            return verdict

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
