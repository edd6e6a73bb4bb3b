"""Record real MariaDB binlog events for the decoder fuzz tests.

Starts a private MariaDB (tests/servers/mariadb.py), runs a small workload over
many column types and hostile names, then splits the binlog file on disk into
events: one JSON line per event with its type and hex bytes (header + body,
checksum removed).

Run from the repository root:  .venv/bin/python tests/unit/data/binlog/record.py
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from tests.servers.mariadb import MariaDBServer

OUT = Path(__file__).parent / "mariadb_events.jsonl"
WORKLOAD = [
    "CREATE TABLE `order\"s` (`select` INT PRIMARY KEY, `a.b` VARCHAR(40), `Kunden Übersicht` TEXT,"
    " d DECIMAL(12,3), f FLOAT, g DOUBLE, dt DATETIME(6), ts TIMESTAMP(3) NULL, dd DATE, tm TIME(2),"
    " y YEAR, e ENUM('a','b','c'), s SET('x','y','z'), bi BIGINT UNSIGNED, ti TINYINT, mi MEDIUMINT,"
    " bt BIT(10), bl BLOB, bn BINARY(4), ch CHAR(3), j JSON) CHARACTER SET utf8mb4",
    "INSERT INTO `order\"s` VALUES (1, 'ä\\'\"`', 'Straße 🙂', -123456789.125, 1.5, -2.25e100,"
    " '2024-02-29 10:11:12.123456', '2024-01-01 00:00:01.5', '0001-01-01', '-838:59:59.99', 2155,"
    " 'b', 'x,z', 18446744073709551615, -128, -8388608, b'1010101010', x'00ff10', x'0102', 'abc',"
    " '{\"k\": [1, 2.5, null, \"ü\"]}')",
    "INSERT INTO `order\"s` (`select`) VALUES (2)",
    "UPDATE `order\"s` SET `a.b` = 'neu', d = 0 WHERE `select` = 1",
    "DELETE FROM `order\"s` WHERE `select` = 2",
    "TRUNCATE TABLE `order\"s`",
    "CREATE TABLE latin (id INT PRIMARY KEY, v VARCHAR(300) CHARACTER SET latin1)",
    "INSERT INTO latin VALUES (1, 'caf\xe9'), (2, REPEAT('x', 290))",
]


def main() -> None:
    server = MariaDBServer()
    server.start()
    try:
        server.create_database("rec")
        for stmt in WORKLOAD:
            server.execute(stmt, db="rec")
        server.execute("FLUSH BINARY LOGS")
        lines = []
        for path in sorted(server.binlog_dir.glob("*.[0-9]*")):
            data = path.read_bytes()
            if data[:4] != b"\xfebin":
                continue
            pos = 4
            while pos + 19 <= len(data):
                _ts, typ, _sid, size, _next, _flags = struct.unpack_from("<IBIIIH", data, pos)
                # binlog_checksum=CRC32 (the default): every event ends in 4 checksum bytes.
                lines.append({"file": path.name, "type": typ, "data": data[pos : pos + size - 4].hex()})
                pos += size
        OUT.write_text("".join(json.dumps(line) + "\n" for line in lines))
        print(f"{len(lines)} events -> {OUT}")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
