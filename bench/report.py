"""bench/results/latest.json + latest.md (+ history/<date>.json): every key, its peer, its target."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

Values = dict[str, Any]


@dataclass(frozen=True)
class Target:
    keys: tuple[str, ...]  # the row's keys, shown together
    what: str
    peer: str
    target: str
    met: Callable[[Values], bool | None]


def _ge(key: str, bound: float) -> Callable[[Values], bool | None]:
    return lambda v: None if v.get(key) is None else v[key] >= bound


def _lt(key: str, bound: float) -> Callable[[Values], bool | None]:
    return lambda v: None if v.get(key) is None else v[key] < bound


def _all(*checks: Callable[[Values], bool | None]) -> Callable[[Values], bool | None]:
    def check(v: Values) -> bool | None:
        results = [c(v) for c in checks]
        return None if None in results else all(results)

    return check


TARGETS: tuple[Target, ...] = (
    Target(("pg_decode_rows_per_s", "pg_recvlogical_rows_per_s", "pg_decode_ratio"),
           "PG source decode to typed ChangeEvents, mixed workload",
           "pg_recvlogical draining an identical slot", ">= 0.9", _ge("pg_decode_ratio", 0.9)),
    Target(("pg_capture_rows_per_s", "producer_ceiling_rows_per_s", "pg_capture_ratio",
            "producer_ceiling_rows_per_s_confluent", "pg_capture_ratio_confluent",
            "pg_capture_rows_per_s_kafka_python", "pg_capture_ratio_kafka_python"),
           "end to end PG -> sealed -> Kafka (tansu) + archive, durable (the real agent, "
           "confluent-kafka backend; _kafka_python: the same with kafka-python)",
           "the lower of pg_recvlogical and raw kafka-python sending pre-sealed-size messages "
           "(_confluent: confluent-kafka's own ceiling instead)",
           ">= 0.7 (stretch >= 100k rows/s)", _ge("pg_capture_ratio", 0.7)),
    Target(("mysql_capture_rows_per_s", "mysql_stock_rows_per_s", "mariadb_binlog_rows_per_s",
            "mysql_speedup", "mysql_decode_rows_per_s", "mysql_decode_speedup"),
           "MariaDB binlog, insert + update workload (end to end; decode-only beside it)",
           "stock mysql-replication and mariadb-binlog on the same binlog",
           ">= 3x stock and >= 50k rows/s",
           _all(_ge("mysql_speedup", 3), _ge("mysql_capture_rows_per_s", 50_000))),
    Target(("p50_latency_ms", "p99_latency_ms"), "commit -> Kafka ack at a steady 10k rows/s",
           "-", "p99 < 250", _lt("p99_latency_ms", 250)),
    Target(("archive_bytes_per_change",), "archive bytes / changes of the capture workload",
           "-", "<= 50", lambda v: None if v.get("archive_bytes_per_change") is None
           else v["archive_bytes_per_change"] <= 50),
    Target(("peak_rss_mb",), "agent peak RSS through one big insert transaction", "-", "< 300",
           _lt("peak_rss_mb", 300)),
    Target(("restore_rows_per_s", "copy_rows_per_s", "restore_ratio",
            "restore_parse_only_rows_per_s", "restore_server_fold_rows_per_s"),
           "full restore into a new schema", "psql \\copy of the same rows from CSV", ">= 0.5",
           _ge("restore_ratio", 0.5)),
    Target(("entity_restore_seconds", "entity_restore_seconds_s3", "entity_bytes_read_fraction"),
           "one entity from the big archive (file://, then the same archive on S3)", "-",
           "< 2 s and <= 0.02",
           _all(_lt("entity_restore_seconds", 2), _lt("entity_restore_seconds_s3", 2),
                lambda v: None
                if v.get("entity_bytes_read_fraction") is None
                else v["entity_bytes_read_fraction"] <= 0.02)),
)

ALL_KEYS = tuple(k for t in TARGETS for k in t.keys)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: other processes ran meanwhile; compare ratios, not rates"}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=RESULTS.parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write(values: Values, notes: dict[str, str], meta: dict[str, Any],
          profiles: dict[str, str | None], runs: dict[str, list[float]],
          results: Path = RESULTS) -> Path:
    """Write latest.json/.md and a dated copy in history/; returns latest.json's path."""
    doc: dict[str, Any] = {key: _round(values.get(key)) for key in ALL_KEYS}
    met = {t.keys[-1] if len(t.keys) == 1 else t.keys[0]: t.met(values) for t in TARGETS}
    doc.update({"notes": {k: v for k, v in notes.items()}, "targets_met": met,
                "runs": {k: [_round(x) for x in v] for k, v in runs.items()}, "meta": meta,
                "profile_top_frames": profiles})
    results.mkdir(parents=True, exist_ok=True)
    (results / "history").mkdir(exist_ok=True)
    text = json.dumps(doc, indent=2, default=str) + "\n"
    (results / "latest.json").write_text(text)
    stamp = meta["date"].replace(":", "").replace("-", "")[:15]
    (results / "history" / f"{stamp}-{meta['mode']}.json").write_text(text)
    (results / "latest.md").write_text(markdown(doc))
    return results / "latest.json"


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    out = [f"# changevault benchmark results ({meta['mode']} mode)", "",
           f"Date: {meta['date']} · commit {meta.get('commit')} · "
           f"{meta['seconds']:.0f} s · `{meta['command']}`", "",
           "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()), "",
           "Workloads: " + meta["workloads"], "",
           "| key | value | what | peer (same run) | target | met |",
           "|---|---|---|---|---|---|"]
    for t in TARGETS:
        met = t.met(doc)
        mark = "n/a" if met is None else ("yes" if met else "**no**")
        for i, key in enumerate(t.keys):
            value = doc.get(key)
            shown = "null" if value is None else f"{value:,}" if isinstance(value, int) \
                else f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
            out.append(f"| {key} | {shown} | {t.what if i == 0 else ''} | "
                       f"{t.peer if i == 0 else ''} | {t.target if i == 0 else ''} | "
                       f"{mark if i == 0 else ''} |")
    out += ["", "## Notes", ""]
    out += [f"- `{k}`: {v}" for k, v in doc["notes"].items()]
    if doc["runs"]:
        out += ["", "## Every run (the table shows medians)", ""]
        out += [f"- `{k}`: {v}" for k, v in doc["runs"].items()]
    for name, frames in (doc.get("profile_top_frames") or {}).items():
        out += ["", f"## Hottest path: {name}", "", meta["profile_what"].get(name, ""), "",
                "```", frames or "not profiled", "```"]
    return "\n".join(out) + "\n"


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3) if abs(value) < 100 else round(value, 1)
    return value


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()
