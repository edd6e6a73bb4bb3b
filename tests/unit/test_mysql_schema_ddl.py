"""DDL recognition and JSON-column tracking of the MySQL schema history."""

from __future__ import annotations

from pathlib import Path

from connectors.mysql.schema_history import SchemaHistory, parse_ddl


def test_parse_ddl_kinds_and_targets() -> None:
    assert parse_ddl("create database shop", "db") is None
    assert parse_ddl("insert into t values (1)", "db") is None
    assert parse_ddl("truncate t1", "db").tables == (("db", "t1"),)  # type: ignore[union-attr]
    d = parse_ddl("RENAME TABLE a TO b, `s`.`c` TO d.e", "db")
    assert d is not None and d.kind == "rename"
    assert d.tables == (("db", "a"), ("db", "b"), ("s", "c"), ("d", "e"))
    d = parse_ddl("DROP TABLE IF EXISTS a, `b`", "db")
    assert d is not None and d.tables == (("db", "a"), ("db", "b"))
    d = parse_ddl("/* c */ ALTER TABLE `x`.`y` ADD COLUMN z int", "db")
    assert d is not None and (d.kind, d.tables) == ("alter", (("x", "y"),))


def test_json_columns_follow_create_alter_rename(tmp_path: Path) -> None:
    h = SchemaHistory(tmp_path)
    h.record_ddl("CREATE TABLE t (id int primary key, doc JSON, d2 json not null)", "db", "p1")
    assert h.json_columns("db.t") == {"doc", "d2"}
    h.record_ddl("ALTER TABLE t DROP COLUMN d2, ADD COLUMN d3 JSON", "db", "p2")
    assert h.json_columns("db.t") == {"doc", "d3"}
    h.record_ddl("ALTER TABLE t MODIFY doc longtext", "db", "p3")
    assert h.json_columns("db.t") == {"d3"}
    h.record_ddl("RENAME TABLE t TO u", "db", "p4")
    assert h.json_columns("db.u") == {"d3"} and h.json_columns("db.t") == frozenset()
    # persisted across instances
    again = SchemaHistory(tmp_path)
    assert again.json_columns("db.u") == {"d3"}
    assert [d["position"] for d in again.ddl()] == ["p1", "p2", "p3", "p4"]
