"""Table shapes while replaying: the snapshot's definitions moved forward by schema records.

A schema record (from a pgoutput Relation message or the MySQL schema
history) carries column names, types and the key the log uses, but not
nullability or defaults: those come from the snapshot's definition and carry
over by column name. A positional name change with the same number of
columns is a RENAME (a drop plus add would move the new column to the end).
Rows in the fold keep the column names they were decoded with; `aliases`
maps a current name to the names it had before, so old rows still read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from agent.events import Column, TableSchema


@dataclass
class TableShape:
    schema: TableSchema  # the shape at the replay point (constraints from the snapshot)
    key: tuple[str, ...]  # the columns the fold is keyed by (what the log's events key on)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.schema.qualified

    def names_of(self, column: str) -> tuple[str, ...]:
        return (column, *self.aliases.get(column, ()))


@dataclass(frozen=True, slots=True)
class KeyChange:
    table: str
    old: tuple[str, ...]
    new: tuple[str, ...]


class Shapes:
    def __init__(self, snapshot_tables: list[TableSchema]) -> None:
        self.by_name: dict[str, TableShape] = {
            t.qualified: TableShape(t, t.primary_key) for t in snapshot_tables
        }

    def get(self, name: str) -> TableShape | None:
        return self.by_name.get(name)

    def apply(self, record: TableSchema) -> KeyChange | None:
        """Move a table to the shape of a schema record; report a key redefinition."""
        shape = self.by_name.get(record.qualified)
        if shape is None:
            pk = record.primary_key
            cols = tuple(
                dataclasses.replace(c, nullable=c.nullable and c.name not in pk)
                for c in record.columns
            )
            self.by_name[record.qualified] = TableShape(
                dataclasses.replace(record, columns=cols), pk
            )
            return None
        old = shape.schema
        old_by_name = {c.name: c for c in old.columns}
        new_names = [c.name for c in record.columns]
        renames: dict[str, str] = {}
        if len(old.columns) == len(record.columns):
            for before, after in zip(old.columns, record.columns, strict=True):
                if before.name != after.name and before.name not in new_names:
                    renames[after.name] = before.name
        columns: list[Column] = []
        for c in record.columns:
            prev = old_by_name.get(renames.get(c.name, c.name))
            if prev is None:
                columns.append(Column(c.name, c.type_name))  # added: nullable, no default known
            else:
                columns.append(Column(c.name, c.type_name, prev.nullable, prev.default))
        aliases = {
            new: (old_name, *shape.aliases.get(old_name, ())) for new, old_name in renames.items()
        }
        for name in new_names:
            if name not in renames and name in shape.aliases:
                aliases[name] = shape.aliases[name]
        renamed = {renames.get(n, n): n for n in new_names}
        pk = tuple(renamed.get(c, c) for c in old.primary_key)
        if not all(c in new_names for c in pk):
            pk = record.primary_key
        fks = tuple(f for f in old.foreign_keys if all(c in renamed for c in f.columns))
        fks = tuple(
            dataclasses.replace(f, columns=tuple(renamed[c] for c in f.columns)) for f in fks
        )
        indexes = tuple(
            dataclasses.replace(i, columns=tuple(renamed[c] for c in i.columns))
            for i in old.indexes
            if all(c in renamed for c in i.columns)
        )
        shape.schema = dataclasses.replace(
            old,
            columns=tuple(columns),
            primary_key=pk,
            version=record.version,
            foreign_keys=fks,
            indexes=indexes,
        )
        shape.aliases = aliases
        old_key = tuple(renamed.get(c, c) for c in shape.key)
        new_key = record.primary_key or old_key
        shape.key = new_key
        if new_key != old_key:
            return KeyChange(record.qualified, old_key, new_key)
        return None
