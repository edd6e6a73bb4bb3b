"""MariaDB figures from the MySQL helper's bench/mysql_decode.py, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "mysql_decode.py"
KEYS = ("mysql_capture_rows_per_s", "mysql_stock_rows_per_s", "mariadb_binlog_rows_per_s",
        "mysql_speedup")


def measure_mysql(quick: bool) -> tuple[dict[str, float | None], dict[str, str]]:
    values: dict[str, float | None] = dict.fromkeys(KEYS)
    notes: dict[str, str] = {}
    if not SCRIPT.exists():
        return values, dict.fromkeys(KEYS, "bench/mysql_decode.py is not present")
    proc = subprocess.run([sys.executable, str(SCRIPT), *(["--quick"] if quick else [])],
                          capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return values, dict.fromkeys(KEYS, f"bench/mysql_decode.py failed: {why}")
    doc = json.loads(lines[-1])
    results = doc.get("results", {})

    def rate(name: str) -> float | None:
        entry = results.get(name)
        return float(entry["rows_per_s"]) if entry else None

    values["mysql_capture_rows_per_s"] = rate("changevault")
    values["mysql_stock_rows_per_s"] = rate("mysql-replication (stock)")
    values["mariadb_binlog_rows_per_s"] = rate("mariadb-binlog")
    values["mysql_speedup"] = doc.get("speedup_vs_stock")
    changes = doc.get("row_changes")
    notes["mysql_capture_rows_per_s"] = (
        f"source decode only (binlog -> typed events, {changes} row changes, insert then "
        "update), not yet end to end through Kafka + archive")
    if values["mariadb_binlog_rows_per_s"] is None:
        notes["mariadb_binlog_rows_per_s"] = "mariadb-binlog is not installed"
    return values, notes
