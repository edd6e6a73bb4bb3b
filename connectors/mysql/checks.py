"""`changevault check` lines for a MySQL/MariaDB source and the retention guard.

The retention guard compares our position with the oldest binlog the server
still has: binlog files older than ours are the server's headroom before it
purges something we still need; none left means an alert should fire now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymysql

from agent.events import Position
from connectors.base import CheckResult
from connectors.mysql.binlog_events import binlog_file_number
from connectors.mysql.binlog_reader import state_of
from connectors.mysql.connection import query_one, variable
from connectors.mysql.gtid import MariaDBGtid, MariaDBGtidList

if TYPE_CHECKING:
    Conn = pymysql.connections.Connection[Any]


@dataclass(frozen=True, slots=True)
class BinlogFile:
    name: str
    size: int


def binary_logs(conn: Conn) -> list[BinlogFile]:
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [BinlogFile(str(r[0]), int(r[1])) for r in cur.fetchall()]


def oldest_gtid_list(conn: Conn, file: str) -> MariaDBGtidList:
    """MariaDB: the GTID state before `file` (its Gtid_list event)."""
    with conn.cursor() as cur:
        cur.execute("SHOW BINLOG EVENTS IN %s LIMIT 4", (file,))
        for row in cur.fetchall():
            if str(row[2]) == "Gtid_list":  # Log_name, Pos, Event_type, Server_id, ..., Info
                found = re.findall(r"(\d+)-(\d+)-(\d+)", str(row[5]))
                return MariaDBGtidList(tuple(sorted(
                    MariaDBGtid(int(d), int(s), int(q)) for d, s, q in found)))
    return MariaDBGtidList()


def missing_reason(conn: Conn, position: Position, mariadb: bool) -> str | None:
    """Why the server can no longer serve `position`; None when it still can."""
    logs = binary_logs(conn)
    if not logs:
        return "the server has no binary logs (log_bin off?)"
    oldest = logs[0]
    state = state_of(position, mariadb)
    if mariadb and isinstance(state, MariaDBGtidList) and state:
        before = oldest_gtid_list(conn, oldest.name)
        behind = [g for g in before.gtids if state.seq(g.domain) < g.seq]
        if behind:
            return (f"needed GTID position {state} is older than the oldest binlog "
                    f"{oldest.name}, which starts after {before}")
        return None
    file = position.get("file")
    if file and binlog_file_number(file) < binlog_file_number(oldest.name):
        return f"needed binlog {file} is purged; the oldest on the server is {oldest.name}"
    if not mariadb and not file:
        purged = query_one(conn, "SELECT @@GLOBAL.gtid_purged")
        if purged and str(purged[0]).strip() and str(state):
            return None if _mysql_covers(conn, str(state)) else (
                f"needed GTID set {state} lacks transactions the server purged ({purged[0]})")
    return None


def _mysql_covers(conn: Conn, ours: str) -> bool:
    row = query_one(conn, "SELECT GTID_SUBSET(@@GLOBAL.gtid_purged, %s)", (ours,))
    return bool(row and int(row[0]))


def retention_headroom_bytes(conn: Conn, position: Position | None) -> int | None:
    """Bytes of binlog the server can still purge before it reaches our position."""
    if position is None or not position.get("file"):
        return None
    ours = binlog_file_number(position.get("file") or "")
    return sum(f.size for f in binary_logs(conn) if binlog_file_number(f.name) < ours)


def behind_bytes(conn: Conn, position: Position | None) -> int | None:
    """Binlog bytes from our position to the end of the newest binlog."""
    if position is None or not position.get("file"):
        return None
    ours = binlog_file_number(position.get("file") or "")
    offset = int(position.get("offset") or 0)
    total = 0
    for f in binary_logs(conn):
        n = binlog_file_number(f.name)
        if n > ours:
            total += f.size
        elif n == ours:
            total += max(0, f.size - offset)
    return total


def source_checks(conn: Conn, mariadb: bool, position: Position | None,
                  tables_without_pk: list[str]) -> list[CheckResult]:
    results: list[CheckResult] = []

    def require(name: str, var: str, want: str) -> None:
        found = variable(conn, var)
        ok = (found or "").upper() == want
        results.append(CheckResult(name, ok, f"expected {var}={want}, found {found}"))

    log_bin = variable(conn, "log_bin")
    results.append(CheckResult("mysql binlog enabled", (log_bin or "").upper() == "ON",
                               f"expected log_bin=ON, found {log_bin}"))
    require("mysql binlog format", "binlog_format", "ROW")
    require("mysql binlog row image", "binlog_row_image", "FULL")
    require("mysql binlog row metadata", "binlog_row_metadata", "FULL")
    if mariadb:
        pos = query_one(conn, "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_strict_mode")
        results.append(CheckResult(
            "mysql gtid mode", True,
            f"MariaDB GTIDs always on; gtid_binlog_pos={pos[0] if pos else ''}, "
            f"gtid_strict_mode={pos[1] if pos else ''}", fatal=False))
    else:
        mode = variable(conn, "gtid_mode")
        results.append(CheckResult(
            "mysql gtid mode", True,
            f"gtid_mode={mode} (resume by GTID set when ON, else by file:offset)", fatal=False))
    expire_s = variable(conn, "binlog_expire_logs_seconds")
    expire_d = variable(conn, "expire_logs_days")
    seconds = int(float(expire_s or 0)) or int(float(expire_d or 0) * 86400)
    results.append(CheckResult(
        "mysql binlog retention", True,
        f"binlogs kept {seconds / 86400:.1f} days" if seconds else
        "binlogs kept until purged by hand (no expiry set)", fatal=False))
    results.append(CheckResult(
        "mysql captured tables have primary keys", not tables_without_pk,
        "expected a primary key on every captured table, found none on "
        + ", ".join(tables_without_pk) if tables_without_pk else "all have one"))
    if position is not None:
        reason = missing_reason(conn, position, mariadb)
        logs = binary_logs(conn)
        headroom = retention_headroom_bytes(conn, position)
        detail = reason or (
            f"position {position.text} is on the server; oldest binlog "
            f"{logs[0].name if logs else '-'}; {headroom or 0} bytes purgeable before it")
        results.append(CheckResult("mysql binlog retention guard", reason is None, detail))
    return results
