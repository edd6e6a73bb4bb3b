"""The entity at the target: which folded rows belong to it.

Decided on the finished fold (each row's state at the target), never on the
events: a delete under DEFAULT identity carries only the key, so whether a
deleted order belonged to customer 42 is known only from the order's state
before it, folded forward from the snapshot.
"""

from __future__ import annotations

import json
from typing import Any

from agent.restore.entity import EntityRoot, Link
from agent.restore.fold import FoldStore, key_json
from agent.restore.shapes import Shapes, TableShape

_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_MISSING = object()


def _get(row: dict[str, Any], shape: TableShape, column: str) -> Any:
    for n in shape.names_of(column):
        if n in row:
            return row[n]
    return _MISSING


def entity_members(
    store: FoldStore, shapes: Shapes, root: EntityRoot, links: list[Link], scope: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """table -> key json -> folded row, for every member of the entity."""
    members: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in scope}
    rows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for table in scope:
        shape = shapes.by_name[table]
        rows[table] = [
            (key_json([_get(r, shape, c) for c in shape.key]), r)
            for r in store.rows(store.table_id(table))
        ]
    root_shape = shapes.by_name[root.table]
    for key, row in rows[root.table]:
        value = _get(row, root_shape, root.column)
        if value is not _MISSING and root.value.matches(value):
            members[root.table][key] = row
    active = [ln for ln in links if ln.child in members and ln.parent in members]
    changed = True
    while changed:
        changed = False
        for ln in active:
            parent_shape, child_shape = shapes.by_name[ln.parent], shapes.by_name[ln.child]
            refs = {
                _DUMPS([_get(r, parent_shape, c) for c in ln.ref_columns])
                for r in members[ln.parent].values()
            }
            if not refs:
                continue
            into = members[ln.child]
            for key, row in rows[ln.child]:
                if key in into:
                    continue
                vals = [_get(row, child_shape, c) for c in ln.columns]
                if any(v is _MISSING or v is None for v in vals):
                    continue
                if _DUMPS(vals) in refs:
                    into[key] = row
                    changed = True
    return members
