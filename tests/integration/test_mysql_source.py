"""MySQLSource against a private MariaDB: types, resume, DDL, snapshot, truncate, errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ServiceError
from tests.conftest import MySQLDatabase
from tests.integration.test_mysql_helpers import collect, make_source
from tests.servers.mariadb import MariaDBServer

TYPES_DDL = """
CREATE TABLE {t} (
  id INT PRIMARY KEY,
  flag TINYINT(1), b BOOL, ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT,
  biu BIGINT UNSIGNED, dec1 DECIMAL(30,10), dec2 DECIMAL(5,0), f FLOAT, d DOUBLE,
  dt DATE, dtz DATE, dtm DATETIME, dtm3 DATETIME(3), dtm6 DATETIME(6), dtz0 DATETIME,
  ts TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL, tm TIME, tmn TIME(2), tm6 TIME(6), y YEAR,
  c CHAR(10), vc VARCHAR(100), l1 VARCHAR(20) CHARACTER SET latin1, tx TEXT,
  bn BINARY(4), vb VARBINARY(10), bl BLOB, e ENUM('small','large'), st SET('a','b','c'),
  bt BIT(10), bt1 BIT(1), j JSON, gen INT AS (i * 2) VIRTUAL, gens VARCHAR(120) AS
  (CONCAT(vc, '!')) STORED, nul INT
)"""

INSERT = """
INSERT INTO {t} (id, flag, b, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec1, dec2, f, d, dt, dtz,
  dtm, dtm3, dtm6, dtz0, ts, ts6, tm, tmn, tm6, y, c, vc, l1, tx, bn, vb, bl, e, st, bt, bt1, j, nul)
VALUES (%s, 1, 0, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 18446744073709551615, '-12345678901234567890.0123456789', 99999, 1.1,
  2.718281828459045, '2024-02-29', '0000-00-00', '2024-02-29 23:59:59', '1999-12-31 10:11:12.345',
  '2000-01-01 00:00:00.000001', '0000-00-00 00:00:00', '2038-01-19 03:14:07',
  '2024-06-01 12:00:00.654321', '838:59:59', '-838:59:59.5', '-00:00:01.000001', 1901,
  'abc', 'héllo 😀 wörld', 'café ÿ', REPEAT('x', 300), x'0102', x'00ff10', x'deadbeef', 'large',
  'a,c', b'1010101010', b'1', '{{"k": [1, 2.5, "s", null, true], "n": {{"x": "😀"}}}}', NULL)
"""

EXPECTED: dict[str, Any] = {
    "flag": 1, "b": 0, "ti": -128, "tiu": 255, "si": -32768, "siu": 65535, "mi": -8388608,
    "miu": 16777215, "i": -2147483648, "iu": 4294967295, "bi": -9223372036854775808,
    "biu": 18446744073709551615, "dec1": "-12345678901234567890.0123456789", "dec2": "99999",
    "f": 1.1, "d": 2.718281828459045, "dt": "2024-02-29", "dtz": None,
    "dtm": "2024-02-29T23:59:59", "dtm3": "1999-12-31T10:11:12.345",
    "dtm6": "2000-01-01T00:00:00.000001", "dtz0": None, "ts": "2038-01-19T03:14:07+00:00",
    "ts6": "2024-06-01T12:00:00.654321+00:00", "tm": "838:59:59", "tmn": "-838:59:59.50",
    "tm6": "-00:00:01.000001", "y": 1901, "c": "abc", "vc": "héllo 😀 wörld", "l1": "café ÿ",
    "tx": "x" * 300, "bn": "AQIAAA==", "vb": "AP8Q", "bl": "3q2+7w==", "e": "large", "st": "a,c",
    "bt": 682, "bt1": 1, "j": {"k": [1, 2.5, "s", None, True], "n": {"x": "😀"}},
    "gen": -2147483648, "gens": "héllo 😀 wörld!", "nul": None,  # gen: i * 2 clipped to INT
}


def _assert_row(got: dict[str, Any], want: dict[str, Any]) -> None:
    diff = {k: (got.get(k, "<missing>"), want.get(k, "<missing>"))
            for k in set(got) | set(want) if got.get(k, "<missing>") != want.get(k, "<missing>")}
    assert not diff, f"(got, expected) per column: {diff}"


def _exec(server: MariaDBServer, db: str, sql: str, *params: Any) -> None:
    with server.connect(db, charset="utf8mb4") as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00', sql_mode = ''")
        cur.execute(sql, params or None)


def test_every_type_round_trips_in_snapshot_and_binlog(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, TYPES_DDL.format(t="alltypes"))
    _exec(mariadb_server, db, INSERT.format(t="alltypes"), 1)
    source = make_source(mysql_database.dsn, tmp_path, ["alltypes"])
    snapshot = source.start(None)
    assert snapshot is not None
    [table] = snapshot.tables()
    snap_rows = list(snapshot.rows(table))
    snapshot.close()
    assert len(snap_rows) == 1
    _assert_row(snap_rows[0], {"id": 1, **EXPECTED})
    assert dict((c.name, c.type_name) for c in table.columns)["j"] == "json"

    _exec(mariadb_server, db, INSERT.format(t="alltypes"), 2)
    _exec(mariadb_server, db, "UPDATE alltypes SET nul = 7 WHERE id = 2")
    _exec(mariadb_server, db, "DELETE FROM alltypes WHERE id = 2")
    (ins, [c]), (_, [u]), (_, [d]) = collect(source, 3)
    assert c.op == "c" and c.after is not None and c.key == {"id": 2}
    _assert_row(c.after, {"id": 2, **EXPECTED})
    assert u.op == "u" and u.before == c.after and u.after == {**c.after, "nul": 7}
    assert d.op == "d" and d.before == u.after and d.after is None and d.key == {"id": 2}
    assert ins.txid.count("-") == 2 and ins.position.get("gtid") == ins.txid
    assert ins.commit_ts.tzinfo is not None


def test_gtid_resume_after_restart_loses_nothing(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
    first = make_source(mysql_database.dsn, tmp_path, ["t"])
    first.start(None).close()  # type: ignore[union-attr]
    for i in range(10):
        _exec(mariadb_server, db, "INSERT INTO t VALUES (%s, 'x')", i)
    txs = collect(first, 4)
    first.close()
    resume = txs[3][0].position  # durable up to the 4th transaction
    for i in range(10, 15):
        _exec(mariadb_server, db, "INSERT INTO t VALUES (%s, 'y')", i)
    second = make_source(mysql_database.dsn, tmp_path, ["t"])
    assert second.start(resume) is None
    rest = collect(second, 11)
    ids = [ev[0].after["id"] for _, ev in rest]  # type: ignore[index]
    assert ids == list(range(4, 15))
    assert [tx.position.sort_key for tx, _ in rest] == sorted(tx.position.sort_key
                                                              for tx, _ in rest)


def test_ddl_mid_stream_decodes_each_row_with_its_own_shape(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, "CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10))")
    source = make_source(mysql_database.dsn, tmp_path, ["t"])
    source.start(None).close()  # type: ignore[union-attr]
    _exec(mariadb_server, db, "INSERT INTO t VALUES (1, 'old')")
    _exec(mariadb_server, db, "ALTER TABLE t ADD COLUMN n INT NOT NULL DEFAULT 5, "
                              "MODIFY a VARCHAR(20)")
    _exec(mariadb_server, db, "INSERT INTO t VALUES (2, 'new', 6)")
    _exec(mariadb_server, db, "ALTER TABLE t DROP COLUMN a, ADD COLUMN doc JSON")
    _exec(mariadb_server, db, "INSERT INTO t VALUES (3, 7, '[1]')")
    # Decoded only now, after every DDL ran: each row must keep the shape it had.
    txs = collect(source, 3)
    rows = [(evs[0].after, evs[0].schema_version) for _, evs in txs]
    assert rows[0] == ({"id": 1, "a": "old"}, 1)
    assert rows[1] == ({"id": 2, "a": "new", "n": 6}, 2)
    assert rows[2] == ({"id": 3, "n": 7, "doc": [1]}, 3)
    assert [s.version for s in txs[1][0].schemas] == [2]
    assert [c.type_name for c in txs[2][0].schemas[0].columns] == ["int", "int", "json"]
    # A second reader from the start (replay after a crash) numbers the shapes the same way.
    again = make_source(mysql_database.dsn, tmp_path, ["t"])
    again.start(txs[0][0].position)
    replay = collect(again, 2)
    assert [evs[0].schema_version for _, evs in replay] == [2, 3]


def test_snapshot_boundary_under_concurrent_writes_is_exactly_once(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, "CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with mariadb_server.connect(db) as conn, conn.cursor() as cur:
            i = 0
            while not stop.is_set():
                cur.execute("INSERT INTO t VALUES (%s, 0)", (i,))
                written.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 200:
            threading.Event().wait(0.01)
        source = make_source(mysql_database.dsn, tmp_path, ["t"])
        snapshot = source.start(None)
        assert snapshot is not None
        while len(written) < len(written) + 0 and False:
            pass
        threading.Event().wait(0.3)
    finally:
        stop.set()
        thread.join()
    snap_ids = [r["id"] for r in snapshot.rows(snapshot.tables()[0])]
    snapshot.close()
    streamed = [evs[0].after["id"] for _, evs in  # type: ignore[index]
                collect(source, len(written) - len(snap_ids))]
    assert sorted(snap_ids + streamed) == written
    assert snap_ids and streamed


def test_truncate_is_a_t_event(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, "CREATE TABLE t (id INT PRIMARY KEY)")
    _exec(mariadb_server, db, "CREATE TABLE other (id INT PRIMARY KEY)")
    source = make_source(mysql_database.dsn, tmp_path, ["t"])
    source.start(None).close()  # type: ignore[union-attr]
    _exec(mariadb_server, db, "INSERT INTO t VALUES (1)")
    _exec(mariadb_server, db, "TRUNCATE other")
    _exec(mariadb_server, db, "TRUNCATE TABLE t")
    (_, [c]), (_, [t]) = collect(source, 2)
    assert c.op == "c"
    assert (t.op, t.table, t.before, t.after) == ("t", "t", None, None)


def test_statement_format_dml_on_captured_table_stops_with_exit_3(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, "CREATE TABLE t (id INT PRIMARY KEY)")
    source = make_source(mysql_database.dsn, tmp_path, ["t"])
    source.start(None).close()  # type: ignore[union-attr]
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION binlog_format = 'STATEMENT'")
        cur.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ServiceError, match="statement-format") as info:
        collect(source, 1)
    assert info.value.exit_code == 3
    assert source.counters.statement_dml_rejected == 1


def test_checks_report_server_settings(
        mariadb_server: MariaDBServer, mysql_database: MySQLDatabase, tmp_path: Path) -> None:
    db = mysql_database.name
    _exec(mariadb_server, db, "CREATE TABLE t (id INT PRIMARY KEY)")
    _exec(mariadb_server, db, "CREATE TABLE nopk (v INT)")
    source = make_source(mysql_database.dsn, tmp_path, ["t", "nopk"])
    results = {r.name: r for r in source.checks()}
    for name in ("mysql binlog format", "mysql binlog row image", "mysql binlog row metadata"):
        assert results[name].ok, results[name]
    assert "gtid_binlog_pos" in results["mysql gtid mode"].detail
    assert not results["mysql captured tables have primary keys"].ok
    assert "nopk" in results["mysql captured tables have primary keys"].detail
