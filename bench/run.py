"""`make bench` / `make bench-quick`: python -m bench.run [--quick].

Starts private servers (PostgreSQL, tansu) like the tests do, runs the
documented workloads (docs/benchmarks.md), and writes bench/results/latest.json
and latest.md, keeping a dated copy in bench/results/history/. Every figure is
reported beside its peer measured in the same run, as a ratio.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import capture, pg_decode, report, workload
from bench.agent_runs import drop_agent_run, new_agent_run, peak_rss_mb, wait_checkpoint
from bench.mysql_capture import KEYS as MYSQL_KEYS
from bench.mysql_capture import measure_mysql_capture
from bench.restore_bench import RestoreResult, measure_restore
from bench.servers import BenchServers, started_servers

log = logging.getLogger("bench")

FAST, SLOW = "confluent-kafka", "kafka-python"


@dataclass(frozen=True)
class Plan:
    mode: str
    repeats: int
    decode_tx: int  # transactions of 100 changes
    profile_tx: int
    capture_tx: int
    capture_tx_slow: int  # kafka-python is ~3x slower: fewer changes, same workload
    ceiling_messages: int
    ceiling_messages_slow: int
    latency_s: float
    latency_drain_s: float
    big_tx_rows: int


QUICK = Plan("quick", 1, 300, 100, 500, 50, 50_000, 10_000, 6, 10, 200_000)
FULL = Plan("full", 3, 10_000, 1_000, 10_000, 300, 200_000, 100_000, 60, 30, 1_000_000)


class Bench:
    def __init__(self, plan: Plan, servers: BenchServers) -> None:
        self.plan = plan
        self.servers = servers
        self.values: dict[str, Any] = {}
        self.notes: dict[str, str] = {}
        self.runs: dict[str, list[float]] = {}
        self.profiles: dict[str, str | None] = {}
        self.failed: list[str] = []
        self._seq = 0
        self._seen_latency: list[str] = []  # consumer-seen p50/p99 of each latency run

    def name(self, what: str) -> str:
        self._seq += 1
        return f"{what}{self._seq}"

    def phase(self, title: str, keys: tuple[str, ...], body: Callable[[], None]) -> None:
        log.info("== %s", title)
        started = time.monotonic()
        try:
            body()
        except Exception as exc:  # one failed phase must not lose the others' figures
            log.error("%s failed: %s", title, exc)
            traceback.print_exc()
            self.failed.append(title)
            for key in keys:
                self.values.setdefault(key, None)
                self.notes.setdefault(key, f"{title} failed: {str(exc).splitlines()[0][:200]}")
        log.info("   %s took %.0f s", title, time.monotonic() - started)

    def median_of(self, key: str, samples: list[float]) -> float:
        self.runs[key] = samples
        value = statistics.median(samples)
        self.values[key] = value
        return value

    # ----------------------------------------------------------------- phases

    def decode(self) -> None:
        ours, peer, ours_cpu, peer_cpu = [], [], [], []
        for i in range(self.plan.repeats):
            run, _ = pg_decode.measure(self.servers.pg, self.servers.workdir, self._next(),
                                       self.plan.decode_tx)
            ours.append(run.changes / run.changevault_s)
            peer.append(run.changes / run.recvlogical_s)
            ours_cpu.append(run.changevault_walsender_cpu_s or 0.0)
            peer_cpu.append(run.recvlogical_walsender_cpu_s or 0.0)
            log.info("   decode run %d: changevault %.0f rows/s, pg_recvlogical %.0f rows/s",
                     i + 1, ours[-1], peer[-1])
        a = self.median_of("pg_decode_rows_per_s", ours)
        b = self.median_of("pg_recvlogical_rows_per_s", peer)
        self.values["pg_decode_ratio"] = a / b
        changes = self.plan.decode_tx * workload.ROWS_PER_TX
        self.notes["pg_decode_rows_per_s"] = (
            f"{changes:,} changes per run; {1e6 / a:.1f} us/row; walsender CPU "
            f"{statistics.median(ours_cpu):.2f} s (ours) vs {statistics.median(peer_cpu):.2f} s "
            f"(pg_recvlogical)")
        _, self.profiles["decode"] = pg_decode.measure(self.servers.pg, self.servers.workdir, self._next(),
                                            self.plan.profile_tx, profile=True)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def capture(self) -> None:
        runs = [capture.measure_capture(self.servers, self.name("cap"), FAST, self.plan.capture_tx,
                                        profile=i == 0) for i in range(self.plan.repeats)]
        self.profiles["agent"] = runs[0].profile or (
            "not profiled: py-spy is not installed (pip install py-spy)")
        rate = self.median_of("pg_capture_rows_per_s", [r.rows_per_s for r in runs])
        changes = sum(r.changes for r in runs)
        self.values["archive_bytes_per_change"] = sum(r.archive_bytes for r in runs) / changes
        sizes = [s for r in runs for s in r.value_sizes]
        value_size = int(statistics.mean(sizes)) if sizes else 700
        self.notes["pg_capture_rows_per_s"] = (
            f"confluent-kafka backend, {runs[0].changes:,} changes per run, timed from the "
            f"first commit to the checkpoint (Kafka acked + archive durable) passing the last; "
            f"mean sealed Kafka value {value_size} bytes")
        recvlogical = self.values.get("pg_recvlogical_rows_per_s")
        # The issues' peer: raw kafka-python producing pre-sealed-size messages.
        ceiling = self.median_of("producer_ceiling_rows_per_s", [
            capture.producer_ceiling(self.servers, SLOW, self.plan.ceiling_messages_slow,
                                     value_size, self.name("ceils"))
            for _ in range(self.plan.repeats)])
        self.notes["producer_ceiling_rows_per_s"] = (
            f"raw kafka-python (the issues' peer), {self.plan.ceiling_messages_slow:,} messages "
            f"of {value_size} random bytes (like sealed values), one per row, acks=all, "
            "idempotent, zstd (the default kafka.compression), through the backend's send() with "
            "one shared delivery callback")
        self.values["pg_capture_ratio"] = rate / min(ceiling, recvlogical or ceiling)
        self.notes["pg_capture_ratio"] = (
            "pg_capture_rows_per_s (confluent-kafka backend) / min(pg_recvlogical, raw "
            "kafka-python ceiling), as the issues define it; pg_capture_ratio_confluent is the "
            "stricter like-for-like figure")
        fast_ceiling = self.median_of("producer_ceiling_rows_per_s_confluent", [
            capture.producer_ceiling(self.servers, FAST, self.plan.ceiling_messages, value_size,
                                     self.name("ceil")) for _ in range(self.plan.repeats)])
        self.notes["producer_ceiling_rows_per_s_confluent"] = (
            f"confluent-kafka (the backend the agent ran), {self.plan.ceiling_messages:,} "
            f"messages of {value_size} random bytes, same settings, through its produce() with "
            "one shared delivery callback")
        self.values["pg_capture_ratio_confluent"] = rate / min(
            fast_ceiling, recvlogical or fast_ceiling)
        self.notes["pg_capture_ratio_confluent"] = (
            "pg_capture_rows_per_s / min(pg_recvlogical, confluent-kafka's own ceiling): "
            "against the same producer library the agent used")
        slow = capture.measure_capture(self.servers, self.name("caps"), SLOW,
                                       self.plan.capture_tx_slow)
        self.values["pg_capture_rows_per_s_kafka_python"] = slow.rows_per_s
        self.values["pg_capture_ratio_kafka_python"] = slow.rows_per_s / min(
            ceiling, recvlogical or ceiling)
        self.notes["pg_capture_rows_per_s_kafka_python"] = (
            f"the agent with the kafka-python backend, one run of {slow.changes:,} changes; "
            "ratio against the same peer as pg_capture_ratio")
        self.notes["archive_bytes_per_change"] = (
            "archive growth during the capture runs (segments + catalog) / changes")

    def repeated(self, one_run: Callable[[], dict[str, float | None]]) -> None:
        """Run a phase `plan.repeats` times; each key gets the median of its runs
        (a run's null, e.g. a failed restore, is left out; all null: null)."""
        samples: dict[str, list[float]] = {}
        for i in range(self.plan.repeats):
            for key, value in one_run().items():
                samples.setdefault(key, [])
                if value is not None:
                    samples[key].append(value)
            log.info("   run %d of %d done", i + 1, self.plan.repeats)
        for key, xs in samples.items():
            if xs:
                self.median_of(key, xs)
            else:
                self.values.setdefault(key, None)

    def latency(self) -> None:
        self.repeated(self._latency_run)

    def _latency_run(self) -> dict[str, float | None]:
        run = capture.measure_latency(self.servers, self.name("lat"), FAST, self.plan.latency_s,
                                      drain_s=self.plan.latency_drain_s)
        seen = [run.seen_percentile(q) for q in (0.50, 0.99)]
        self._seen_latency.append(f"{_ms(seen[0])}/{_ms(seen[1])}")
        self.notes["p50_latency_ms"] = self.notes["p99_latency_ms"] = (
            f"confluent-kafka; {run.committed} transactions of 100 changes committed in "
            f"{run.seconds:.0f} s ({run.rate_rows_per_s:,.0f} rows/s offered); commit -> Kafka "
            "ack from the agent's changevault_sink_latency_seconds{sink=\"kafka\"} histogram "
            "over this load (interpolated inside its bucket, as histogram_quantile does; "
            "transactions not acknowledged within "
            f"{self.plan.latency_drain_s:.0f} s after the load count as infinitely late). "
            "A consumer of the transactions topic saw them at p50/p99 "
            f"{', '.join(self._seen_latency)} ms after commit (each run): that adds tansu's "
            "fetch path (a bare producer and consumer at this rate see ~60 ms at the median "
            "on a quiet machine, seconds on a saturated one)")
        return {"p50_latency_ms": run.percentile(0.50), "p99_latency_ms": run.percentile(0.99)}

    def big_transaction(self) -> None:
        self.repeated(self._big_run)

    def _big_run(self) -> dict[str, float | None]:
        rows = self.plan.big_tx_rows
        values: dict[str, float | None] = {}
        run = new_agent_run(self.servers, self.name("big"), FAST)
        try:
            run.start()
            with self.servers.pg.connect(run.dbname) as conn:
                started = time.monotonic()
                workload.insert_one_transaction(conn, 1, rows)
                end = workload.current_lsn(conn)
            finished = wait_checkpoint(run, end, timeout=3600, poll=0.2)
            values["peak_rss_mb"] = peak_rss_mb(run.pid)
            self.notes["peak_rss_mb"] = (
                f"VmHWM of `changevault run` (confluent-kafka) through one transaction of "
                f"{rows:,} inserts, captured in {finished - started:.0f} s "
                f"({rows / (finished - started):,.0f} rows/s)")
            run.stop()
            result = RestoreResult()
            measure_restore(self.servers, run, rows, end, result)
            values.update(result.values)
            self.notes.update(result.notes)
            self.notes["copy_rows_per_s"] = (
                f"psql \\copy FROM a CSV of the same {rows:,} rows into an identical table "
                "(primary key) in a new schema")
        finally:
            drop_agent_run(self.servers, run)
        return values

    def mysql(self) -> None:
        self.repeated(self._mysql_run)

    def _mysql_run(self) -> dict[str, float | None]:
        values, notes = measure_mysql_capture(self.servers, self.plan.mode == "quick")
        self.notes.update(notes)
        return values


def _ms(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, one run each "
                        "(under 3 minutes)")
    parser.add_argument("--only", action="append", default=[],
                        choices=["decode", "capture", "latency", "big", "mysql"],
                        help="run only these phases (repeatable); results still list every key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)  # our progress lines, not every client library's
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    meta: dict[str, Any] = {"mode": plan.mode, "date": report.now_iso(),
                            "commit": report.git_commit(), "machine": report.machine(),
                            "command": "python -m bench.run" + (" --quick" if args.quick else ""),
                            "plan": plan.__dict__}
    with started_servers() as servers:
        bench = Bench(plan, servers)
        phases: list[tuple[str, str, tuple[str, ...], Callable[[], None]]] = [
            ("decode", "decode: changevault vs pg_recvlogical",
             ("pg_decode_rows_per_s", "pg_recvlogical_rows_per_s", "pg_decode_ratio"),
             bench.decode),
            ("capture", "capture end to end + producer ceilings",
             (*tuple(k for k in report.TARGETS[1].keys), "archive_bytes_per_change"),
             bench.capture),
            ("latency", "latency at 10k rows/s", ("p50_latency_ms", "p99_latency_ms"),
             bench.latency),
            ("big", "one big transaction: RSS, restore, copy",
             ("peak_rss_mb", *report.TARGETS[6].keys, *report.TARGETS[7].keys),
             bench.big_transaction),
            ("mysql", "MariaDB end to end (bench/mysql_capture.py)", MYSQL_KEYS, bench.mysql),
        ]
        for key, title, keys, body in phases:
            if args.only and key not in args.only:
                for k in keys:
                    bench.values.setdefault(k, None)
                    bench.notes.setdefault(k, "phase not run (--only)")
                continue
            bench.phase(title, keys, body)
    meta["seconds"] = time.monotonic() - started
    meta["workloads"] = WORKLOADS
    meta["profile_what"] = {
        "agent": f"py-spy on `changevault run` (confluent-kafka) during the first capture run "
                 f"({plan.capture_tx * workload.ROWS_PER_TX:,} mixed changes), every thread, "
                 "sampled while it held the GIL",
        "decode": f"cProfile of PostgresSource decoding {plan.profile_tx * workload.ROWS_PER_TX:,}"
                  " mixed changes (replication read + pgoutput + typed values + ChangeEvent), "
                  "in-process, by own time"}
    for key in report.ALL_KEYS:
        if bench.values.get(key) is None and key not in bench.notes:
            bench.notes[key] = "not measured"
    # A partial run must not replace the committed results.
    results = report.RESULTS / "partial" if args.only else report.RESULTS
    path = report.write(bench.values, bench.notes, meta, bench.profiles, bench.runs, results)
    print(f"wrote {path} and {path.with_suffix('.md')} in {meta['seconds']:.0f} s")
    if bench.failed:
        print(f"phases that failed: {', '.join(bench.failed)}", file=sys.stderr)
        return 1
    return 0


WORKLOADS = (
    "the 8-column table bench_rows (bigint pk, text, numeric(12,2), timestamptz, bool, jsonb, "
    "int, date); mixed transactions of 100 changes: 60 inserts, 30 updates of a random live "
    "range (setseed 0.42), 10 deletes; big transaction: N inserts in one statement. "
    "See docs/benchmarks.md."
)


if __name__ == "__main__":
    raise SystemExit(main())
