"""`--preview` and `--in-place`: compare the restored rows with the target's, row by row.

Rows are compared as the JSON values of CONTRACT.md (the target's rows read
through the capture path's converters), keyed by primary key. A row that
already matches is never written — on PostgreSQL its xmin stays the same.
In place, everything runs in one transaction that first locks the rows it
compares (FOR UPDATE), refuses cascades that would leave the scope, then
applies inserts and updates parents first and deletes children first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent import fastjson
from agent.errors import IntegrityError, UsageError
from agent.events import TableSchema
from agent.restore.checksum import TableChecksum, checksum_of
from agent.restore.entity import EntityRoot, Link
from agent.restore.fold import key_json
from connectors.base import Applier, RowChanges, RowMatch


def _dumps(value: Any) -> str:
    return fastjson.dumps_raw(value).decode("utf-8")  # json columns are raw JSON text


SHOWN = 5  # rows printed per table and kind in a preview

Rows = dict[str, list[Any]]  # key json -> values in column order


@dataclass
class TableDiff:
    table: TableSchema
    changes: RowChanges = field(default_factory=RowChanges)
    unchanged: int = 0
    triggers: list[str] = field(default_factory=list)
    expected: TableChecksum = field(default_factory=TableChecksum)
    actual: TableChecksum | None = None
    wanted: list[list[Any]] = field(default_factory=list)
    schema: str = ""  # where the table is on the target


def key_of(table: TableSchema, values: list[Any]) -> str:
    names = table.column_names
    return key_json([values[names.index(c)] for c in table.primary_key])


def parents_first(tables: list[TableSchema]) -> list[TableSchema]:
    """Topological order by foreign keys among these tables (cycles: input order)."""
    by_name = {t.qualified: t for t in tables}
    done: list[TableSchema] = []
    seen: set[str] = set()

    def visit(t: TableSchema, path: set[str]) -> None:
        if t.qualified in seen or t.qualified in path:
            return
        path.add(t.qualified)
        for fk in t.foreign_keys:
            parent = by_name.get(f"{fk.ref_schema}.{fk.ref_table}")
            if parent is not None and parent is not t:
                visit(parent, path)
        seen.add(t.qualified)
        done.append(t)

    for t in tables:
        visit(t, set())
    return done


def diff(table: TableSchema, wanted: Rows, current: Rows) -> TableDiff:
    out = TableDiff(table, wanted=list(wanted.values()))
    for key, values in wanted.items():
        out.expected.add(values)
        now = current.get(key)
        if now is None:
            out.changes.inserts.append(values)
        elif now == values:
            out.unchanged += 1
        else:
            out.changes.updates.append((now, values))
    out.changes.deletes = [v for k, v in current.items() if k not in wanted]
    return out


def where(schema: str | None, t: TableSchema) -> str:
    """The target schema of a table: the given one, or (in place) its own."""
    return t.schema if schema is None else schema


def current_rows(
    applier: Applier,
    schema: str | None,
    tables: list[TableSchema],
    wanted: dict[str, Rows],
    entity: tuple[EntityRoot, list[Link]] | None,
    lock: bool,
) -> dict[str, Rows]:
    """The target's rows in scope: every row (whole tables) or the entity's, found
    on the target through the same links, plus the rows with the restored keys."""
    by_name = {t.qualified: t for t in tables}
    out: dict[str, Rows] = {t.qualified: {} for t in tables}

    def take(t: TableSchema, match: RowMatch | None) -> set[str]:
        new = set()
        for values in applier.select_rows(where(schema, t), t, match, lock):
            key = key_of(t, values)
            if key not in out[t.qualified]:
                out[t.qualified][key] = values
                new.add(key)
        return new

    for t in tables:
        if entity is None:
            take(t, None)
        else:
            keys = [json.loads(k) for k in wanted.get(t.qualified, {})]
            take(t, RowMatch(t.primary_key, keys))
    if entity is None:
        return out
    root, links = entity
    if root.table not in by_name:  # e.g. a new target schema: nothing there yet
        return out
    take(by_name[root.table], RowMatch((root.column,), [[root.value.text]]))
    active = [ln for ln in links if ln.child in by_name and ln.parent in by_name]
    changed = True
    while changed:
        changed = False
        for ln in active:
            parent, child = by_name[ln.parent], by_name[ln.child]
            names = parent.column_names
            if not all(c in names for c in ln.ref_columns):
                continue
            refs = {
                key_json([v[names.index(c)] for c in ln.ref_columns])
                for v in out[ln.parent].values()
            }
            values = [json.loads(r) for r in refs if None not in json.loads(r)]
            if values and take(child, RowMatch(ln.columns, values)):
                changed = True
    return out


def compare(
    applier: Applier,
    schema: str | None,
    tables: list[TableSchema],
    wanted: dict[str, Rows],
    entity: tuple[EntityRoot, list[Link]] | None,
    lock: bool,
) -> list[TableDiff]:
    ordered = parents_first(tables)
    existing = [t for t in ordered if applier.table_exists(where(schema, t), t.table)]
    now = current_rows(applier, schema, existing, wanted, entity, lock)
    diffs = []
    for t in ordered:
        d = diff(t, wanted.get(t.qualified, {}), now.get(t.qualified, {}))
        d.schema = where(schema, t)
        if t in existing:
            d.triggers = applier.triggers(d.schema, t.table)
        diffs.append(d)
    return diffs


def apply_in_place(applier: Applier, diffs: list[TableDiff]) -> None:
    """Inside the caller's transaction: refuse outside cascades, then write, then verify."""
    for d in diffs:
        scope = {o.table.table: (o.table, _keys(o)) for o in diffs if o.schema == d.schema}
        reach = applier.cascade_outside(d.schema, d.table, d.changes.deletes, scope)
        if reach is not None:
            raise UsageError(
                f"--in-place: deleting rows of {d.schema}.{d.table.table} would cascade to "
                f"{reach}; nothing was written (widen the scope or restore into a new schema)"
            )
    for d in diffs:  # parents first
        if d.changes.inserts or d.changes.updates:
            applier.apply_rows(
                d.schema, d.table, RowChanges(d.changes.inserts, d.changes.updates, [])
            )
    for d in reversed(diffs):  # children first
        if d.changes.deletes:
            applier.apply_rows(d.schema, d.table, RowChanges([], [], d.changes.deletes))
    for d in diffs:
        pk = d.table.primary_key
        rows = applier.select_rows(d.schema, d.table, RowMatch(pk, _key_values(d, d.wanted)), False)
        gone = applier.select_rows(
            d.schema, d.table, RowMatch(pk, _key_values(d, d.changes.deletes)), False
        )
        d.actual = checksum_of(rows)
        if gone or d.actual != d.expected:
            raise IntegrityError(
                f"{d.schema}.{d.table.table}: rows read back after the in-place restore do not "
                f"match the archive ({d.actual.rows} rows, {d.actual.hex()} vs "
                f"{d.expected.rows}, {d.expected.hex()}; {len(gone)} deleted rows remain); "
                "rolled back, nothing written"
            )


def _key_values(d: TableDiff, rows: Iterable[list[Any]]) -> list[list[Any]]:
    return [json.loads(key_of(d.table, v)) for v in rows]


def _keys(d: TableDiff) -> list[list[Any]]:
    """Keys of every row in scope: restored ones and the ones to delete."""
    return _key_values(d, [*d.wanted, *d.changes.deletes])


def preview_lines(diffs: list[TableDiff]) -> list[str]:
    out = []
    for d in diffs:
        c = d.changes
        out.append(
            f"  {d.table.qualified} -> {d.schema}.{d.table.table}: {len(c.inserts)} to insert, "
            f"{len(c.updates)} to update, {len(c.deletes)} to delete, {d.unchanged} unchanged"
        )
        names = d.table.column_names
        for values in c.inserts[:SHOWN]:
            out.append(f"    insert {_dumps(dict(zip(names, values, strict=True)))}")
        for old, new in c.updates[:SHOWN]:
            changed = {n: [o, v] for n, o, v in zip(names, old, new, strict=True) if o != v}
            out.append(f"    update {key_of(d.table, new)}: {_dumps(changed)}")
        for values in c.deletes[:SHOWN]:
            out.append(f"    delete {_dumps(dict(zip(names, values, strict=True)))}")
        if d.triggers:
            out.append(f"    triggers that would fire: {', '.join(d.triggers)}")
    return out
