"""The fold: key changes, truncates, unchanged columns, schema changes, re-keying."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import UsageError
from agent.events import Column, TableSchema
from agent.restore.fold import Fold, FoldStore
from agent.restore.shapes import Shapes, TableShape

T = TableSchema("public", "t", (Column("id", "bigint", False), Column("a", "text"), Column("b", "text")), ("id",))


def env(op: str, *, key: Any = None, before: Any = None, after: Any = None, unchanged: list[str] | None = None, table: str = "t") -> bytes:
    return json.dumps({
        "id": "x", "op": op,
        "source": {"schema": "public", "table": table, "schema_version": 1},
        "key": key, "before": before, "after": after, "unchanged": unchanged or [],
    }).encode()


def rows(fold: Fold, name: str = "public.t") -> list[dict[str, Any]]:
    store = fold.store
    return sorted(store.rows(store.table_id(name)), key=lambda r: json.dumps(r, sort_keys=True))


@pytest.fixture
def fold() -> Any:
    store = FoldStore()
    yield Fold(store, Shapes([T]), None)
    store.close()


def test_insert_update_delete(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "y"}))
    fold.event(env("c", key={"id": 2}, after={"id": 2, "a": "p", "b": "q"}))
    fold.event(env("u", key={"id": 1}, before={"id": 1}, after={"id": 1, "a": "x2", "b": "y"}))
    fold.event(env("d", key={"id": 2}, before={"id": 2}))
    assert rows(fold) == [{"id": 1, "a": "x2", "b": "y"}]


def test_key_change_removes_the_old_key(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "y"}))
    fold.event(env("u", key={"id": 5}, before={"id": 1}, after={"id": 5, "a": "x", "b": "y"}))
    assert rows(fold) == [{"id": 5, "a": "x", "b": "y"}]


def test_unchanged_columns_keep_their_previous_value_across_a_key_change(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "big-toast"}))
    fold.event(env("u", key={"id": 7}, before={"id": 1}, after={"id": 7, "a": "z"}, unchanged=["b"]))
    assert rows(fold) == [{"id": 7, "a": "z", "b": "big-toast"}]


def test_keys_and_values_beyond_64_bits_stay_exact(fold: Fold) -> None:
    # numeric keys arrive as strings, but a json column or a MySQL BIGINT UNSIGNED
    # near 2**64 is a JSON number: parsed as a float it would merge or alter rows.
    big = 2**64 - 1
    fold.event(env("c", key={"id": big}, after={"id": big, "a": str(2**70), "b": None}))
    fold.event(env("c", key={"id": big - 1}, after={"id": big - 1, "a": "other", "b": None}))
    fold.event(env("u", key={"id": big}, before={"id": big}, after={"id": big, "a": "x", "b": "y"}))
    assert rows(fold) == [{"id": big - 1, "a": "other", "b": None}, {"id": big, "a": "x", "b": "y"}]


def test_truncate_empties_only_that_table(fold: Fold) -> None:
    other = TableSchema("public", "o", (Column("id", "int", False),), ("id",))
    fold.shapes.by_name[other.qualified] = TableShape(other, other.primary_key)
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "y"}))
    fold.event(env("c", key={"id": 1}, after={"id": 1}, table="o"))
    fold.event(env("t", table="t"))
    assert rows(fold) == []
    assert rows(fold, "public.o") == [{"id": 1}]
    fold.event(env("c", key={"id": 3}, after={"id": 3, "a": None, "b": None}))
    assert rows(fold) == [{"id": 3, "a": None, "b": None}]


def test_out_of_scope_tables_are_not_folded() -> None:
    store = FoldStore()
    try:
        fold = Fold(store, Shapes([T]), {"public.other"})
        fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "y"}))
        assert list(store.rows(store.table_id("public.t"))) == []
    finally:
        store.close()


def test_rename_keeps_old_rows_readable_and_the_constraints(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "y"}))
    renamed = TableSchema("public", "t", (Column("id", "bigint"), Column("alpha", "text"), Column("b", "varchar(5)")), ("id",), 2)
    fold.schema_change(renamed)
    shape = fold.shapes.by_name["public.t"]
    assert [c.name for c in shape.schema.columns] == ["id", "alpha", "b"]
    assert shape.schema.columns[0].nullable is False  # from the snapshot's definition
    assert shape.schema.columns[2].type_name == "varchar(5)"
    assert shape.names_of("alpha") == ("alpha", "a")


def test_added_and_dropped_columns(fold: Fold) -> None:
    added = TableSchema("public", "t", (Column("id", "bigint"), Column("b", "text"), Column("c", "int")), ("id",), 2)
    fold.schema_change(added)
    names = [c.name for c in fold.shapes.by_name["public.t"].schema.columns]
    assert names == ["id", "b", "c"]


def test_primary_key_redefined_rekeys_the_fold(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "k1", "b": "y"}))
    fold.event(env("c", key={"id": 2}, after={"id": 2, "a": "k2", "b": "y"}))
    rekeyed = TableSchema("public", "t", T.columns, ("a",), 2)
    fold.schema_change(rekeyed)
    fold.event(env("d", key={"a": "k1"}, before={"a": "k1"}))
    assert rows(fold) == [{"id": 2, "a": "k2", "b": "y"}]


def test_primary_key_on_a_column_old_rows_lack_fails_clearly(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "k1", "b": "y"}))
    cols = (*T.columns, Column("z", "int"))
    with pytest.raises(UsageError, match="primary key was redefined"):
        fold.schema_change(TableSchema("public", "t", cols, ("z",), 2))


def test_json_columns_fold_as_their_exact_text() -> None:
    # The envelope parser reads 1.50 as 1.5; jsonb keeps 1.50. Values holding a
    # non-integer number are re-read exactly; arrays of json element-wise.
    table = TableSchema("public", "j", (Column("id", "bigint", False), Column("doc", "jsonb"),
                                         Column("docs", "json[]"), Column("n", "double precision")), ("id",))
    store = FoldStore()
    try:
        fold = Fold(store, Shapes([table]), None, exact_json=True)
        data = (b'{"id":"x","op":"c","source":{"schema":"public","table":"j","schema_version":1},'
                b'"key":{"id":1},"before":null,"after":{"id":1,"doc":{"p":19.90,"q":[1e400]},'
                b'"docs":[{"a":1},null],"n":2.50},"unchanged":[]}')
        fold.event(data)
        fold.event(env("c", key={"id": 2}, after={"id": 2, "doc": {"a": 1}, "docs": None, "n": 1}, table="j"))
        got = sorted(store.rows(store.table_id("public.j")), key=lambda r: r["id"])
        assert got == [
            {"id": 1, "doc": b'{"p":19.90,"q":[1e400]}', "docs": [b'{"a":1}', None], "n": 2.5},
            {"id": 2, "doc": b'{"a":1}', "docs": None, "n": 1},
        ]
    finally:
        store.close()


def test_without_exact_json_values_stay_parsed(fold: Fold) -> None:
    fold.event(env("c", key={"id": 1}, after={"id": 1, "a": "x", "b": "y"}))
    assert rows(fold) == [{"id": 1, "a": "x", "b": "y"}]


def test_a_jsonb_key_with_a_non_integer_number_is_deleted_and_rekeyed() -> None:
    # The fold keys rows by their json columns' exact text (19.90): the old key
    # of a delete or a key-changing update must be spelled the same way.
    table = TableSchema("public", "k", (Column("id", "jsonb", False), Column("a", "text")), ("id",))
    store = FoldStore()

    def raw_env(op: str, key: str | None, before: str | None, after: str | None) -> bytes:
        return (b'{"id":"x","op":"%s","source":{"schema":"public","table":"k","schema_version":1},'
                b'"key":%s,"before":%s,"after":%s,"unchanged":[]}'
                % (op.encode(), *((v or "null").encode() for v in (key, before, after))))

    try:
        fold = Fold(store, Shapes([table]), None, exact_json=True)
        fold.event(raw_env("c", '{"id":{"p":19.90}}', None, '{"id":{"p":19.90},"a":"x"}'))
        fold.event(raw_env("c", '{"id":{"p":2.50}}', None, '{"id":{"p":2.50},"a":"y"}'))
        fold.event(raw_env("d", '{"id":{"p":19.90}}', '{"id":{"p":19.90}}', None))
        fold.event(raw_env("u", '{"id":{"p":3.50}}', '{"id":{"p":2.50}}', '{"id":{"p":3.50},"a":"y"}'))
        got = list(store.rows(store.table_id("public.k")))
        assert got == [{"id": b'{"p":3.50}', "a": "y"}]
    finally:
        store.close()
