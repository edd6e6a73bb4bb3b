"""Facts the running agent derives from its archive's catalog (read once at start)."""

from __future__ import annotations

from collections.abc import Sequence

from agent.archive import catalog
from agent.archive.catalog import CatalogEntry
from agent.archive.reader import complete_snapshots
from agent.checkpoint import position_from_json
from agent.events import Position, TableSchema
from agent.settings import EntityLink


def archived_checkpoint(entries: Sequence[CatalogEntry]) -> Position | None:
    """The newest checkpoint the archive recorded (for a host whose state_dir is lost).

    Each segment entry carries the pipeline's durable position (every sink had
    it) when the segment closed; before any segment, the first snapshot's.
    """
    found: Position | None = None
    for entry in entries:
        raw = entry.body.get("checkpoint") if entry.kind == catalog.SEGMENT else None
        if entry.kind == catalog.SNAPSHOT_END and found is None:
            raw = entry.body.get("position")
        if raw is not None:
            found = position_from_json(raw)
    return found


def newest_snapshot_tables(entries: Sequence[CatalogEntry]) -> list[TableSchema]:
    snaps = complete_snapshots(list(entries))
    return snaps[-1].tables if snaps else []


def link_columns(
    tables: Sequence[TableSchema], entity_links: Sequence[EntityLink]
) -> dict[str, list[str]]:
    """Columns whose values each segment's index holds, so an entity restore
    opens only the segments that matter: the foreign-key columns of the newest
    snapshot's definitions, and the `from` columns of entity_links."""
    links: dict[str, list[str]] = {}

    def add(table: str, column: str) -> None:
        columns = links.setdefault(table, [])
        if column not in columns:
            columns.append(column)

    for t in tables:
        for fk in t.foreign_keys:
            for column in fk.columns:
                add(t.qualified, column)
    for link in entity_links:
        table, _, column = link.from_.rpartition(".")
        if "." not in table:  # `table.column`: the sink looks tables up as schema.table
            named = [t.qualified for t in tables if t.table == table]
            table = named[0] if len(named) == 1 else table
        add(table, column)
    return links
