"""Binlog decode throughput: stock mysql-replication vs changevault's reader vs mariadb-binlog.

All three read the same binlog of one mixed insert/update workload, in the same
run. Prints rows/s per reader and a JSON line. Without --dsn a private MariaDB
server is started (tests/servers/mariadb.py) and removed afterwards.

    .venv/bin/python bench/mysql_decode.py           # 300k row changes
    .venv/bin/python bench/mysql_decode.py --quick   # 40k row changes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from agent.events import Position, Transaction
from agent.settings import ArchiveSettings, EncryptionSettings, Settings, SourceSettings
from connectors.mysql import MySQLSource
from tests.servers.mariadb import MariaDBServer

DB, TABLE = "bench", "orders"


def load(server: MariaDBServer, rows: int) -> None:
    create_table(server)
    load_rows(server, rows)


def create_table(server: MariaDBServer) -> None:
    server.execute(f"CREATE DATABASE {DB}")
    server.execute(
        f"CREATE TABLE {DB}.{TABLE} (id INT PRIMARY KEY, customer_id BIGINT, status VARCHAR(20),"
        " amount DECIMAL(12,2), created DATETIME(3), score DOUBLE, note VARCHAR(100), qty INT)")


def load_rows(server: MariaDBServer, rows: int) -> None:
    """`rows` inserts in 1,000-row statements, then the same rows updated likewise."""
    base = datetime(2024, 5, 1, 10, 0, 0)  # distinct timestamps: no formatting shortcuts
    with server.connect(DB) as conn, conn.cursor() as cur:
        batch = 1000
        for start in range(0, rows, batch):
            values = [(i, i * 7, "new", f"{i % 1000}.{i % 100:02d}",
                       base + timedelta(seconds=i * 37, microseconds=i * 1000 % 999_000),
                       i / 3, f"note {i} ü", i % 50) for i in range(start, min(rows, start + batch))]
            cur.executemany(f"INSERT INTO {TABLE} VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", values)
        for start in range(0, rows, batch):  # the update half of the workload
            cur.execute(f"UPDATE {TABLE} SET status='paid', qty=qty+1 WHERE id >= %s AND id < %s",
                        (start, start + batch))


def stock(server: MariaDBServer, first: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    stream = BinLogStreamReader(
        connection_settings={"host": server.host, "port": server.port, "user": server.user,
                             "passwd": server.password},
        server_id=9101, blocking=False, resume_stream=True, log_file=first, log_pos=4,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent], only_schemas=[DB],
        only_tables=[TABLE], enable_logging=False)
    n = 0
    for event in stream:
        n += len(event.rows)
    stream.close()
    return n, time.perf_counter() - t0


def ours(server: MariaDBServer, first: str, state_dir: Path) -> tuple[int, float]:
    settings = Settings(
        source=SourceSettings(type="mysql", dsn=server.dsn(DB), tables=[TABLE], server_id=9102),
        archive=ArchiveSettings(url=f"file://{state_dir}/archive"),
        encryption=EncryptionSettings(recipients=[state_dir / "archive.pub"]), state_dir=state_dir)
    source = MySQLSource(settings, state_dir)
    start = Position(f"{first}:4", (1, 4), (("file", first), ("offset", "4")))
    t0 = time.perf_counter()
    n = 0
    for item in source.reader().read(start, blocking=False):
        if isinstance(item, Transaction):
            for _ in item.events:
                n += 1
    return n, time.perf_counter() - t0


def mariadb_binlog(server: MariaDBServer, first: str) -> tuple[int, float] | None:
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            ["mariadb-binlog", "--read-from-remote-server", f"--host={server.host}",
             f"--port={server.port}", f"--user={server.user}", "--to-last-log",
             "--base64-output=decode-rows", "--verbose", first],
            capture_output=True, check=True)
    except FileNotFoundError:
        return None
    elapsed = time.perf_counter() - t0
    rows = out.stdout.count(b"\n### INSERT INTO") + out.stdout.count(b"\n### UPDATE ")
    return rows, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40k row changes instead of 300k")
    args = parser.parse_args()
    rows = 20_000 if args.quick else 150_000
    with tempfile.TemporaryDirectory() as tmp, MariaDBServer(name="mariadb-bench") as server:
        first = server.execute("SHOW BINARY LOGS")[0][0]
        load(server, rows)
        results: dict[str, tuple[int, float] | None] = {
            "mysql-replication (stock)": stock(server, first),
            "changevault": ours(server, first, Path(tmp)),
            "mariadb-binlog": mariadb_binlog(server, first),
        }
    print(f"{'reader':28} {'rows':>9} {'seconds':>8} {'rows/s':>10}")
    summary: dict[str, dict[str, float]] = {}
    for name, result in results.items():
        if result is None:
            print(f"{name:28} {'not installed':>9}")
            continue
        n, secs = result
        summary[name] = {"rows": n, "seconds": round(secs, 3), "rows_per_s": round(n / secs)}
        print(f"{name:28} {n:9d} {secs:8.2f} {n / secs:10.0f}")
    ratio = summary["changevault"]["rows_per_s"] / summary["mysql-replication (stock)"]["rows_per_s"]
    print(f"changevault / stock: {ratio:.1f}x")
    print(json.dumps({"bench": "mysql_decode", "row_changes": 2 * rows, "results": summary,
                      "speedup_vs_stock": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
