"""--entity: strict typed values, scope through links, candidates, membership, diff order."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from agent.archive.index_lookup import contains as _contains
from agent.crypto.keyfiles import KeyhashKey
from agent.crypto.keyhash import KeyHasher
from agent.errors import UsageError
from agent.events import Column, ForeignKey, TableSchema
from agent.restore.candidates import Candidates
from agent.restore.entity import links_of, parse_entity, parse_value, scope_tables
from agent.restore.fold import Fold, FoldStore
from agent.restore.inplace import diff, parents_first
from agent.restore.membership import entity_members
from agent.restore.shapes import Shapes
from agent.settings import EntityLink

CUSTOMERS = TableSchema("public", "customers", (Column("id", "integer", False), Column("email", "text")), ("id",))
ORDERS = TableSchema(
    "public", "orders", (Column("id", "integer", False), Column("customer_id", "integer")), ("id",),
    foreign_keys=(ForeignKey("o_c", ("customer_id",), "public", "customers", ("id",)),),
)
ITEMS = TableSchema(
    "public", "items", (Column("id", "bigint", False), Column("order_id", "integer")), ("id",),
    foreign_keys=(ForeignKey("i_o", ("order_id",), "public", "orders", ("id",)),),
)
LEDGER = TableSchema("public", "ledger", (Column("id", "integer", False), Column("cust", "integer")), ("id",))
OTHER = TableSchema("public", "other", (Column("id", "integer", False),), ("id",))
TABLES = {t.qualified: t for t in (CUSTOMERS, ORDERS, ITEMS, LEDGER, OTHER)}
DECLARED = [EntityLink.model_validate({"from": "ledger.cust", "to": "customers.id"})]


@pytest.mark.parametrize("raw", ["1;DROP TABLE x", "1 OR 1=1", "", "1.0", " 1", "0x10", "2147483648"])
def test_integer_values_are_strict(raw: str) -> None:
    with pytest.raises(UsageError):
        parse_value("integer", raw, "--entity")


@pytest.mark.parametrize(("type_name", "ok", "bad"), [
    ("int(11)", ["-2147483648", "2147483647"], ["2147483648", "1.5"]),
    ("int(10) unsigned", ["0", "4294967295"], ["-1", "4294967296"]),
    ("bigint(20) unsigned", ["18446744073709551615"], ["18446744073709551616", "-1"]),
    ("tinyint(4)", ["-128", "127"], ["128"]),
    ("mediumint(8) unsigned zerofill", ["16777215"], ["16777216"]),
])
def test_mysql_integer_types_parse_with_their_ranges(type_name: str, ok: list[str], bad: list[str]) -> None:
    for raw in ok:
        assert parse_value(type_name, raw, "w").value == int(raw)
    for raw in bad:
        with pytest.raises(UsageError):
            parse_value(type_name, raw, "w")


def test_mysql_decimal_parses_like_numeric() -> None:
    d = parse_value("decimal(10,2)", "7.5", "w")
    assert d.value == Decimal("7.5") and d.json == "7.50"


def test_values_parse_to_their_types() -> None:
    assert parse_value("integer", "-42", "w").value == -42
    n = parse_value("numeric(12,2)", "10.5", "w")
    assert n.value == Decimal("10.5") and n.json == "10.50" and n.matches("10.50")
    assert parse_value("numeric", "10.5", "w").json is None  # printed form unknown: no index
    u = parse_value("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "w")
    assert u.value == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert u.json == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    t = parse_value("text", "x'; DROP TABLE y; --", "w")
    assert t.value == "x'; DROP TABLE y; --" and t.matches("x'; DROP TABLE y; --")
    i = parse_value("integer", "42", "w")
    assert i.matches(42) and not i.matches("42") and not i.matches(True)
    with pytest.raises(UsageError):
        parse_value("numeric(12,2)", "1e5", "w")
    with pytest.raises(UsageError):
        parse_value("point", "(1,2)", "w")


def test_entity_names_resolve_against_captured_tables() -> None:
    root = parse_entity("customers.id=42", TABLES)
    assert (root.table, root.column, root.value.value) == ("public.customers", "id", 42)
    assert parse_entity("public.customers.email=a@b", TABLES).value.value == "a@b"
    for bad in ("customers=1", "nosuch.id=1", "customers.nosuch=1", "customers.id", "a.b.c.d=1"):
        with pytest.raises(UsageError):
            parse_entity(bad, TABLES)


def test_scope_reaches_the_root_through_fks_and_entity_links() -> None:
    links = links_of(TABLES, DECLARED)
    assert scope_tables("public.customers", links) == [
        "public.customers", "public.orders", "public.ledger", "public.items"]
    assert [ln.declared for ln in links if ln.child == "public.ledger"] == [True]


def _fold(shapes: Shapes) -> FoldStore:
    store = FoldStore()
    fold = Fold(store, shapes, None)
    for table, rows in {
        "customers": [{"id": 1, "email": "a"}, {"id": 2, "email": "b"}],
        "orders": [{"id": 10, "customer_id": 1}, {"id": 11, "customer_id": 2}, {"id": 12, "customer_id": 1}],
        "items": [{"id": 100, "order_id": 10}, {"id": 101, "order_id": 11}],
        "ledger": [{"id": 7, "cust": 1}],
    }.items():
        for row in rows:
            fold.event(json.dumps({"op": "c", "source": {"schema": "public", "table": table},
                                   "key": None, "before": None, "after": row}).encode())
    # Under DEFAULT identity a delete carries the key only.
    fold.event(json.dumps({"op": "d", "source": {"schema": "public", "table": "orders"},
                           "key": {"id": 12}, "before": {"id": 12}, "after": None}).encode())
    return store


def test_membership_is_decided_on_the_fold() -> None:
    shapes = Shapes(list(TABLES.values()))
    links = links_of(TABLES, DECLARED)
    scope = scope_tables("public.customers", links)
    store = _fold(shapes)
    try:
        members = entity_members(store, shapes, parse_entity("customers.id=1", TABLES), links, scope)
    finally:
        store.close()
    assert {t: sorted(json.loads(k)[0] for k in m) for t, m in members.items()} == {
        "public.customers": [1], "public.orders": [10], "public.items": [100], "public.ledger": [7]}


def test_candidates_grow_through_any_version_and_hash_like_the_sink() -> None:
    shapes = Shapes(list(TABLES.values()))
    links = links_of(TABLES, DECLARED)
    scope = scope_tables("public.customers", links)
    c = Candidates(shapes, parse_entity("customers.id=1", TABLES), links, scope)
    c.observe("public.customers", {"id": 1, "email": "a"})
    c.observe("public.orders", {"id": 11, "customer_id": 2})
    c.observe("public.orders", {"id": 11, "customer_id": 1})  # pointed at 1 once
    c.observe("public.items", {"id": 101, "order_id": 11})
    c.propagate()
    assert c.found["public.items"] == {"[101]"}
    hasher = KeyHasher(KeyhashKey(b"k" * 32))
    hashes = c.new_hashes(hasher)
    assert hasher.row_key("public", "customers", {"id": 1})[:8] in hashes
    assert hasher.column_value("public", "orders", "customer_id", 1)[:8] in hashes
    assert hasher.column_value("public", "ledger", "cust", 1)[:8] in hashes
    assert c.root_key_hash(hasher) == hasher.row_key("public", "customers", {"id": 1})[:8]
    index = b"".join(sorted(hashes))
    assert all(_contains(index, h) for h in hashes) and not _contains(index, b"\xff" * 8)


def test_diff_leaves_matching_rows_alone_and_orders_parents_first() -> None:
    d = diff(ORDERS, {"[1]": [1, 5], "[2]": [2, 6], "[3]": [3, 7]}, {"[1]": [1, 5], "[2]": [2, 9], "[4]": [4, 1]})
    assert (d.unchanged, d.changes.inserts, d.changes.updates, d.changes.deletes) == (
        1, [[3, 7]], [([2, 9], [2, 6])], [[4, 1]])
    assert [t.table for t in parents_first([ITEMS, ORDERS, CUSTOMERS])] == ["customers", "orders", "items"]
