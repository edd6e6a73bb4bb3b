"""`source.tables` entries: the documented syntax, its errors, and a round trip for any name."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.settings import format_table_name, load_settings, parse_table_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customers", (None, "customers")),
        ("public.customers", ("public", "customers")),
        ("Public.Customers", ("Public", "Customers")),  # exact: no case folding
        ('"Kunden Übersicht"', (None, "Kunden Übersicht")),
        ('public."order""s"', ("public", 'order"s')),
        ('"a.b"."c.d"', ("a.b", "c.d")),
        ('s."a.b"', ("s", "a.b")),
        ("select.group", ("select", "group")),
        ("shop.`tick`", ("shop", "`tick`")),
        ("shop.it's", ("shop", "it's")),
        ("Kunden Übersicht.Straße", ("Kunden Übersicht", "Straße")),  # inner spaces are fine
        ("🛒.🧾", ("🛒", "🧾")),
        ('" padded "', (None, " padded ")),
        ('""""', (None, '"')),
    ],
)
def test_accepted_names(text: str, expected: tuple[str | None, str]) -> None:
    assert parse_table_name(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "an empty name"),
        ("a.b.c", "3 dot-separated names"),
        ("a.", "empty name after the last dot"),
        (".a", "an empty name"),
        ("a..b", "an empty name"),
        ('"unclosed', "not closed"),
        ('"a"b', "expected . or the end after a quoted name"),
        ('a"b', 'a " inside an unquoted name'),
        (" a", "spaces around an unquoted name"),
        ("a.b ", "spaces around an unquoted name"),
        ('""', "an empty name"),
        ("a\x00b", "a NUL character"),
    ],
)
def test_refused_names(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_table_name(text)


def test_a_bad_entry_in_the_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "cv.yaml"
    config.write_text(
        "source: {type: postgres, dsn: 'postgresql://u@h/db', tables: ['public.ok', 'a.b.c']}\n"
        "archive: {url: 'file:///tmp/a'}\n"
        "encryption: {recipients: [/tmp/k.pub]}\n"
        "state_dir: /tmp/s\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(config, environ={})
    message = str(err.value)
    assert "source.tables" in message and "'a.b.c'" in message and "\n" not in message


def test_table_names_property(tmp_path: Path) -> None:
    config = tmp_path / "cv.yaml"
    config.write_text(
        "source: {type: mysql, dsn: 'mysql://u@h/shop', tables: ['t1', '\"a.b\".\"x\"\"y\"']}\n"
        "archive: {url: 'file:///tmp/a'}\n"
        "encryption: {recipients: [/tmp/k.pub]}\n"
        "state_dir: /tmp/s\n"
    )
    s = load_settings(config, environ={})
    assert s.source.table_names == [(None, "t1"), ("a.b", 'x"y')]


# Any non-empty name without NUL survives format -> parse unchanged.
_names = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20
)


@settings(max_examples=300, deadline=1000)
@given(schema=st.none() | _names, table=_names)
def test_round_trip_of_any_name(schema: str | None, table: str) -> None:
    assert parse_table_name(format_table_name(schema, table)) == (schema, table)


@settings(max_examples=300, deadline=1000)
@given(st.text(max_size=30))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        schema, table = parse_table_name(text)
    except ValueError:
        return
    assert table and (schema is None or schema)
