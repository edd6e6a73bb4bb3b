"""Rows that may belong to an entity, from every version of them seen so far.

Membership at the target is decided later, on the finished fold. While
choosing segments we only need a superset that grows monotonically: a row
is a candidate when any version of it seen (snapshot row, before or after
image of an event) is the root or points through a link at a candidate.
Every candidate's key then pulls in every segment that mentions it, so its
fold ends complete — including deletes that, under PostgreSQL's DEFAULT
replica identity, carry nothing but the key.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from agent.crypto.keyhash import KeyHasher
from agent.restore.entity import EntityRoot, Link
from agent.restore.fold import key_json
from agent.restore.shapes import Shapes

_MISSING = object()
INDEX_HASH_BYTES = 8  # as agent.archive.sink writes them


def _get(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in row:
            return row[n]
    return _MISSING


class Candidates:
    def __init__(self, shapes: Shapes, root: EntityRoot, links: list[Link], scope: list[str]):
        self.shapes = shapes
        self.root = root
        self.links = [ln for ln in links if ln.child in scope and ln.parent in scope]
        self.scope = set(scope)
        # table -> key json -> primary-key dict (for the row-key hash)
        self.keys: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.found: dict[str, set[str]] = defaultdict(set)
        # per link: referenced values (json) -> child keys that held them
        self._pointing: dict[Link, dict[str, set[str]]] = {
            ln: defaultdict(set) for ln in self.links
        }
        # per link: parent key -> referenced values it had
        self._refs: dict[Link, dict[str, set[str]]] = {ln: defaultdict(set) for ln in self.links}
        self._hashed: set[tuple[str, str]] = set()
        self._linked = {ln.child for ln in self.links} | {ln.parent for ln in self.links}

    def observe(self, table: str, row: dict[str, Any] | None) -> None:
        if row is None or table not in self.scope:
            return
        shape = self.shapes.get(table)
        if shape is None:
            return
        is_root = False
        if table == self.root.table:
            value = _get(row, shape.names_of(self.root.column))
            is_root = value is not _MISSING and self.root.value.matches(value)
        if not is_root and table not in self._linked:
            return  # neither the root nor a link end: nothing to learn from this row
        pk = {c: _get(row, shape.names_of(c)) for c in shape.key}
        if any(v is _MISSING for v in pk.values()):
            return
        key = key_json(list(pk.values()))
        self.keys[table].setdefault(key, pk)
        if is_root:
            self.found[table].add(key)
        for ln in self.links:
            if ln.child == table:
                vals = [_get(row, shape.names_of(c)) for c in ln.columns]
                if all(v is not _MISSING and v is not None for v in vals):
                    self._pointing[ln][key_json(vals)].add(key)
            if ln.parent == table:
                vals = [_get(row, shape.names_of(c)) for c in ln.ref_columns]
                if all(v is not _MISSING and v is not None for v in vals):
                    self._refs[ln][key].add(key_json(vals))

    def propagate(self) -> None:
        changed = True
        while changed:
            changed = False
            for ln in self.links:
                for parent_key in list(self.found.get(ln.parent, ())):
                    for ref in self._refs[ln].get(parent_key, ()):
                        new = self._pointing[ln].get(ref, set()) - self.found[ln.child]
                        if new:
                            self.found[ln.child] |= new
                            changed = True

    def root_key_hash(self, hasher: KeyHasher) -> bytes | None:
        """The root's row-key hash when the root column is the table's whole key."""
        shape = self.shapes.get(self.root.table)
        if shape is None or shape.key != (self.root.column,) or self.root.value.json is None:
            return None
        schema, table = self.root.table.split(".", 1)
        return hasher.row_key(schema, table, {self.root.column: self.root.value.json})[
            :INDEX_HASH_BYTES
        ]

    def new_hashes(self, hasher: KeyHasher) -> set[bytes]:
        """Index entries of candidates not asked for yet: their row keys and link values."""
        out: set[bytes] = set()
        for table, keys in self.found.items():
            schema, name = table.split(".", 1)
            for key in keys:
                if (table, key) in self._hashed:
                    continue
                self._hashed.add((table, key))
                out.add(hasher.row_key(schema, name, self.keys[table][key])[:INDEX_HASH_BYTES])
        # Link values are re-derived every round: a parent's referenced values may
        # only become known after its segments are read.
        for ln in self.links:
            child_schema, child_table = ln.child.split(".", 1)
            for parent_key in self.found.get(ln.parent, ()):
                for ref in self._refs[ln].get(parent_key, ()):
                    for column, value in zip(ln.columns, json.loads(ref), strict=True):
                        h = hasher.column_value(child_schema, child_table, column, value)
                        out.add(h[:INDEX_HASH_BYTES])
        return out
