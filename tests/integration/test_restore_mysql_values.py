"""MySQLApplier on a private MariaDB: every captured type loads and reads back exactly.

Values are written the way the MySQL source emits them (docs/mysql.md), loaded
by both methods (LOAD DATA LOCAL INFILE and multi-row INSERT), read back and
compared value for value and by restore's checksum; a few are also checked at
the SQL level so a symmetric mistake in load and read-back cannot hide.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent.errors import UsageError
from agent.events import Column, ForeignKey, Index, TableSchema
from agent.restore.checksum import checksum_of
from connectors.mysql.applier import MySQLApplier

BLOB = bytes(range(256)) * 4
COLUMNS = (
    Column("id", "bigint(20) unsigned", False, "auto_increment"),
    Column("t_bool", "tinyint(1)"),
    Column("t_tiny", "tinyint(4)"), Column("t_tiny_u", "tinyint(3) unsigned"),
    Column("t_small", "smallint(6)"), Column("t_small_u", "smallint(5) unsigned"),
    Column("t_med", "mediumint(9)"), Column("t_med_u", "mediumint(8) unsigned"),
    Column("t_int", "int(11)", True, "5"), Column("t_int_u", "int(10) unsigned"),
    Column("t_big", "bigint(20)"), Column("t_big_u", "bigint(20) unsigned"),
    Column("t_dec", "decimal(20,6)", True, "1.500000"), Column("t_dec0", "decimal(5,0)"),
    Column("t_float", "float"), Column("t_double", "double"),
    Column("t_date", "date"), Column("t_dt0", "datetime", True, "'2020-01-01 00:00:00'"),
    Column("t_dt3", "datetime(3)"), Column("t_dt6", "datetime(6)"),
    Column("t_ts", "timestamp(6)", True, "current_timestamp(6)"), Column("t_ts0", "timestamp"),
    Column("t_time", "time"), Column("t_time6", "time(6)"),
    Column("t_year", "year(4)"),
    Column("t_char", "char(5)"), Column("t_varchar", "varchar(40)", True, "'it\\'s'"),
    Column("t_latin", "varchar(40) character set latin1"), Column("t_text", "text"),
    Column("t_bin", "binary(4)"), Column("t_varbin", "varbinary(10)"), Column("t_blob", "blob"),
    Column("t_enum", "enum('a','it''s','b\\\\c')"), Column("t_set", "set('x','y','z')"),
    Column("t_bit", "bit(10)", True, "b'101'"), Column("t_bit64", "bit(64)"),
    Column("t_json", "json"),
    Column("t_zero", "date", False),
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


ROWS: list[list[Any]] = [
    [1, 1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
     -9223372036854775808, 18446744073709551615, "-12345678901234.123456", "99999",
     3.4028235e38, 1.7976931348623157e308, "1000-01-01", "2024-02-29T10:11:12",
     "2024-02-29T10:11:12.345", "9999-12-31T23:59:59.999999",
     "2038-01-19T03:14:07.999999+00:00", "1970-01-01T00:00:01+00:00",
     "-838:59:59", "838:59:59.000000", 1901, "ab", "\U0001F600 ünïcødé", "café €",
     "a\tb\nc\\d\\N\0e\r", b64(b"\x00\x01\x00\x00"), b64(b"\x00\xff\t\n\\"), b64(BLOB),
     "it's", "x,z", 1023, 18446744073709551615,
     {"k": [1, 2.5, "é", None, True], "z": {"a": "b\n"}}, None],
    [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "0.000000", "-1", 1.1, 0.1, "2024-02-29",
     "2024-02-29T00:00:00", "2024-02-29T00:00:00.100", "2024-02-29T00:00:00.000001",
     "2024-02-29T10:00:00.500000+00:00", "2024-02-29T10:00:00+00:00", "100:00:00",
     "-00:00:00.500000", 0, "", "", "", "", b64(b"\x00" * 4), b64(b""), b64(b""),
     "b\\c", "", 0, 0, [], "2024-01-01"],
    [3, *[None] * (len(COLUMNS) - 2), None],
    [1000, *[None] * (len(COLUMNS) - 2), "1999-12-31"],
]
ROWS[2][-1] = None  # a NOT NULL zero date arrives as null


def schemas(db: str) -> tuple[TableSchema, TableSchema]:
    main = TableSchema(
        schema=db, table="all`types", columns=COLUMNS, primary_key=("id",),
        indexes=(Index("by_text", ("t_text",)), Index("by_int", ("t_int", "t_big"), True)),
    )
    child = TableSchema(
        schema=db, table="child",
        columns=(Column("id", "int(11)", False), Column("parent", "bigint(20) unsigned")),
        primary_key=("id",),
        foreign_keys=(ForeignKey("child_parent", ("parent",), db, "all`types", ("id",),
                                 "CASCADE"),),
    )
    return main, child


def rows_for(table: TableSchema) -> Iterator[list[object]]:
    if table.table == "child":
        yield from ([1, 1], [2, 2], [3, None])
    else:
        yield from ROWS


def expected(table: TableSchema) -> list[list[Any]]:
    out = [list(r) for r in rows_for(table)]
    if table.table != "child":
        out[2][-1] = None
    return out


@pytest.mark.parametrize("method", ["load_data", "insert"])
def test_every_type_round_trips(mariadb_server: Any, mysql_database: Any, method: str) -> None:
    target = f"r_{uuid.uuid4().hex[:8]}"
    main, child = schemas(mysql_database.name)
    applier = MySQLApplier(mariadb_server.dsn(mysql_database.name), method=method)  # type: ignore[arg-type]
    try:
        assert applier.method == method
        counts = applier.load_new(target, [main, child], rows_for, foreign_keys=True)
        assert counts == {main.qualified: 4, child.qualified: 3}
        for table in (main, child):
            got = sorted(applier.read_back(target, table), key=lambda r: r[0])
            want = expected(table)
            for g, w in zip(got, want, strict=True):
                assert g == w, [(c.name, a, b) for c, a, b in
                                zip(table.columns, g, w, strict=True) if a != b]
            assert checksum_of(got) == checksum_of(want)
    finally:
        applier.close()

    ident = f"`{target}`.`all``types`"
    # SQL-level checks: the bytes and instants the server holds, not only what reads back.
    row = mariadb_server.execute(
        f"SELECT HEX(t_blob) = HEX(%s), HEX(t_latin), t_bit + 0, UNIX_TIMESTAMP(t_ts0),"
        f" t_year + 0, HEX(t_bin), t_float = CAST(3.4028234663852886e38 AS FLOAT),"
        f" t_time, LENGTH(t_text) FROM {ident} WHERE id = 1", params=(BLOB,))[0]
    assert row[0] == 1 and row[1] == "636166E92080" and row[2] == 1023 and row[3] == 1
    assert row[4] == 1901 and row[5] == "00010000" and row[6] == 1
    assert str(row[7]) == "-35 days, 1:00:01" and row[8] == 12
    assert mariadb_server.execute(f"SELECT t_year + 0, t_zero FROM {ident} WHERE id = 2") == [
        (0, __import__("datetime").date(2024, 1, 1))]
    zero = mariadb_server.execute(f"SELECT CAST(t_zero AS CHAR) FROM {ident} WHERE id = 3")
    assert zero == [("0000-00-00",)]
    # Defaults, AUTO_INCREMENT past the maximum, indexes and the foreign key exist.
    mariadb_server.execute(f"INSERT INTO {ident} (t_zero) VALUES ('2000-01-01')")
    new = mariadb_server.execute(
        f"SELECT id, t_int, t_dec, t_varchar, t_bit + 0, t_dt0 FROM {ident} ORDER BY id DESC LIMIT 1")
    assert new[0][0] == 1001
    assert new[0][1:5] == (5, __import__("decimal").Decimal("1.500000"), "it's", 5)
    indexes = {r[0] for r in mariadb_server.execute(
        "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
        " AND TABLE_NAME = 'all`types'", params=(target,))}
    assert indexes == {"PRIMARY", "by_text", "by_int"}
    fks = mariadb_server.execute(
        "SELECT CONSTRAINT_NAME, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS"
        " WHERE CONSTRAINT_SCHEMA = %s", params=(target,))
    assert fks == [("child_parent", "CASCADE")]
    mariadb_server.execute(f"DROP DATABASE `{target}`")


def test_refuses_a_non_empty_table_and_sees_a_corrupted_row(
        mariadb_server: Any, mysql_database: Any) -> None:
    target = f"r_{uuid.uuid4().hex[:8]}"
    _, child = schemas(mysql_database.name)
    applier = MySQLApplier(mariadb_server.dsn(mysql_database.name))
    try:
        applier.load_new(target, [child], rows_for, foreign_keys=False)
        want = checksum_of(expected(child))
        assert checksum_of(applier.read_back(target, child)) == want
        mariadb_server.execute(f"UPDATE `{target}`.child SET parent = 7 WHERE id = 2")
        assert checksum_of(applier.read_back(target, child)) != want
        # Foreign keys only for a whole restore.
        assert not mariadb_server.execute(
            "SELECT 1 FROM information_schema.REFERENTIAL_CONSTRAINTS"
            " WHERE CONSTRAINT_SCHEMA = %s", params=(target,))
        with pytest.raises(UsageError, match="found rows"):
            applier.load_new(target, [child], rows_for, foreign_keys=False)
    finally:
        applier.close()
    # The refused restore dropped nothing it did not create.
    assert mariadb_server.execute(f"SELECT COUNT(*) FROM `{target}`.child") == [(3,)]
    mariadb_server.execute(f"DROP DATABASE `{target}`")


def test_failed_load_drops_what_it_created(mariadb_server: Any, mysql_database: Any) -> None:
    target = f"r_{uuid.uuid4().hex[:8]}"
    table = TableSchema(schema=mysql_database.name, table="t",
                        columns=(Column("id", "int(11)", False), Column("n", "tinyint(4)")),
                        primary_key=("id",))
    applier = MySQLApplier(mariadb_server.dsn(mysql_database.name), method="insert")
    try:
        with pytest.raises(Exception, match="Out of range"):
            applier.load_new(target, [table], lambda t: iter([[1, 1000]]), foreign_keys=False)
    finally:
        applier.close()
    assert not mariadb_server.execute(
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", params=(target,))
