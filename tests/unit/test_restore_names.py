"""`--tables` and `--entity` names: quoted identifiers, lists split on unquoted commas."""

from __future__ import annotations

import pytest

from agent.errors import UsageError
from agent.events import Column, TableSchema
from agent.restore.entity import parse_entity
from agent.restore.names import parse_table_list, split_unquoted


def _t(schema: str, table: str) -> TableSchema:
    return TableSchema(schema, table, (Column("id", "integer", False, None),), ("id",))


TABLES = [_t("public", "customers"), _t("public", "a,b"), _t("odd.schema", 'x"y'),
          _t("other", "customers"), _t("public", "k=v")]


def test_split_on_unquoted_separators_only() -> None:
    assert split_unquoted('a,"b,c",d', ",") == ["a", '"b,c"', "d"]
    assert split_unquoted('"x""y,z",w', ",") == ['"x""y,z"', "w"]


def test_table_list_with_quoted_names() -> None:
    got = parse_table_list('public."a,b", "odd.schema"."x""y" ,public.customers', TABLES)
    assert got == {"public.a,b", 'odd.schema.x"y', "public.customers"}


@pytest.mark.parametrize("raw", ["customers", "nosuch", '"unclosed', "a.b.c", ","])
def test_ambiguous_unknown_or_malformed_names_are_usage_errors(raw: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_table_list(raw, TABLES)
    assert exc.value.exit_code == 2


def test_entity_with_quoted_table_names() -> None:
    tables = {t.qualified: t for t in TABLES}
    root = parse_entity('"odd.schema"."x""y".id=7', tables)
    assert (root.table, root.column, root.value.value) == ('odd.schema.x"y', "id", 7)
    root = parse_entity('public."k=v".id=8', tables)
    assert (root.table, root.value.value) == ("public.k=v", 8)
    with pytest.raises(UsageError):
        parse_entity("customers.id=1", tables)  # in two schemas
