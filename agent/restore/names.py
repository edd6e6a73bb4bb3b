"""Table names on restore's command line: `--tables T1,T2` and `--entity`'s `[schema.]table`.

Names follow agent.settings.parse_table_name: a part holding `.`, `,`, `=`
or `"` is double-quoted with `""` for one `"` (`"a,b"."x=y"`). Lists are
split on unquoted commas only, and a name is matched against the captured
tables' (schema, table) pairs, never against a dotted string that a dot in
a name would make ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.errors import UsageError
from agent.events import TableSchema
from agent.settings import format_table_name, parse_table_name


def split_unquoted(text: str, sep: str) -> list[str]:
    """`text` split on `sep` where it stands outside double quotes."""
    parts: list[str] = []
    start = 0
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted  # `""` inside a quoted name toggles twice
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def resolve_table(
    schema: str | None, table: str, tables: Iterable[TableSchema], where: str
) -> TableSchema:
    """The one captured table named so (any schema when none is given)."""
    known = list(tables)
    matches = [t for t in known if t.table == table and schema in (None, t.schema)]
    if len(matches) != 1:
        names = ", ".join(sorted(format_table_name(t.schema, t.table) for t in known))
        raise UsageError(
            f"{where}: expected one captured table named {format_table_name(schema, table)!r}, "
            f"found {len(matches)} (captured: {names})"
        )
    return matches[0]


def parse_table_list(raw: str, tables: Iterable[TableSchema]) -> set[str]:
    """`--tables`: qualified names ("schema.table" keys of the shapes) of the listed tables."""
    known = list(tables)
    wanted: set[str] = set()
    for item in split_unquoted(raw, ","):
        text = item.strip()
        if not text:
            continue
        try:
            schema, table = parse_table_name(text)
        except ValueError as exc:
            raise UsageError(f"--tables: {exc}") from None
        wanted.add(resolve_table(schema, table, known, "--tables").qualified)
    if not wanted:
        raise UsageError("--tables: expected a comma-separated list of tables, found none")
    return wanted
