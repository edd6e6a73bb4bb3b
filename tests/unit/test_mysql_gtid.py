"""GTID positions of both flavours: parsing, formatting, union, containment, order."""

from __future__ import annotations

import pytest

from agent.errors import UsageError
from connectors.mysql.gtid import (
    MariaDBGtid,
    MariaDBGtidList,
    MySQLGtidSet,
    parse_gtid_state,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "0a0b0c0d-0000-1111-2222-333344445555"


def test_mariadb_list_parses_several_domains_and_formats_sorted() -> None:
    state = MariaDBGtidList.parse("1-2-7, 0-1-42")
    assert str(state) == "0-1-42,1-2-7"
    assert state.seq(0) == 42 and state.seq(1) == 7 and state.seq(5) == 0


def test_mariadb_with_gtid_replaces_its_domain_only() -> None:
    state = MariaDBGtidList.parse("0-1-42,1-2-7").with_gtid(MariaDBGtid(0, 3, 43))
    assert str(state) == "0-3-43,1-2-7"
    assert str(MariaDBGtidList().with_gtid(MariaDBGtid(2, 1, 1))) == "2-1-1"


def test_mariadb_union_contains_and_compare() -> None:
    a = MariaDBGtidList.parse("0-1-10,1-1-5")
    b = MariaDBGtidList.parse("0-1-12")
    assert str(a.union(b)) == "0-1-12,1-1-5"
    assert a.contains(MariaDBGtid(0, 1, 10)) and not a.contains(MariaDBGtid(0, 1, 11))
    assert not a.contains(MariaDBGtid(7, 1, 1))
    assert a.compare(a.union(b)) == -1
    assert a.union(b).compare(a) == 1
    assert a.compare(MariaDBGtidList.parse("1-1-5,0-1-10")) == 0
    assert a.compare(b) is None  # b is ahead in domain 0, behind in domain 1


@pytest.mark.parametrize("bad", ["0-1", "a-b-c", "0-1-2-3", "0-1-5,0-2-6"])
def test_mariadb_rejects_malformed(bad: str) -> None:
    with pytest.raises(UsageError):
        MariaDBGtidList.parse(bad)


def test_mysql_set_parses_merges_and_formats() -> None:
    s = MySQLGtidSet.parse(f"{U1}:1-5:7-9,\n{U2.upper()}:1-3, {U1}:6")
    assert str(s) == f"{U2}:1-3,{U1}:1-9"
    assert str(MySQLGtidSet.parse(f"{U1}:3")) == f"{U1}:3"


def test_mysql_with_gtid_fills_gaps_and_contains() -> None:
    s = MySQLGtidSet.parse(f"{U1}:1-5:7-9")
    assert not s.contains(U1, 6) and s.contains(U1, 7) and not s.contains(U2, 1)
    filled = s.with_gtid(U1, 6)
    assert str(filled) == f"{U1}:1-9"
    assert str(s.with_gtid(U2, 4)) == f"{U2}:4,{U1}:1-5:7-9"


def test_mysql_union_and_compare() -> None:
    a = MySQLGtidSet.parse(f"{U1}:1-5")
    b = MySQLGtidSet.parse(f"{U1}:1-3,{U2}:1")
    assert str(a.union(b)) == f"{U2}:1,{U1}:1-5"
    assert a.compare(a.union(b)) == -1
    assert a.union(b).compare(b) == 1
    assert a.compare(MySQLGtidSet.parse(f"{U1}:1-2:3-5")) == 0
    assert a.compare(b) is None
    assert MySQLGtidSet.parse(f"{U1}:1-3:5").issubset(MySQLGtidSet.parse(f"{U1}:1-5"))
    assert not MySQLGtidSet.parse(f"{U1}:1-6").issubset(MySQLGtidSet.parse(f"{U1}:1-5"))


@pytest.mark.parametrize("bad", [f"{U1}", "nouuid:1-2", f"{U1}:5-3", f"{U1}:0", f"{U1}:x"])
def test_mysql_rejects_malformed(bad: str) -> None:
    with pytest.raises(UsageError):
        MySQLGtidSet.parse(bad)


def test_flavour_is_recognised_by_syntax() -> None:
    assert isinstance(parse_gtid_state("0-1-5"), MariaDBGtidList)
    assert isinstance(parse_gtid_state(f"{U1}:1-5"), MySQLGtidSet)
    assert not parse_gtid_state("")
