"""Which segments an entity restore must open, from the per-segment indexes.

Each segment, and each snapshot part, has a sealed `.idx` object: sorted
8-byte truncated keyed hashes of every event's (table, primary key) and of
the values of link columns.
Starting from the root's key, segments whose index holds a wanted hash are
read, the rows seen there make new candidates (see candidates.py), whose
keys and link values select more segments — to a fixed point.

Always read, whatever the index says:
- segments with truncates or schema changes (the catalog entry flags them);
- segments holding a linked table whose link columns that segment's index
  may not cover: the sink records no list of the columns it indexed yet, so
  only `entity_links` (which every sink version indexes) are trusted unless
  the entry names `link_columns`;
- segments holding the root table when the root column is not its key;
- the last segment of the plan (so the report's stop position is exact),
  unless the target admits all of it and its catalog entry names its last
  transaction (`last_txid`);
- neighbours of a selected segment that a transaction crosses into, unless
  the catalog records which transaction each segment continues (`continues`):
  the reader then takes a transaction's identity and completeness from the
  catalog instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.archive.catalog import CatalogEntry
from agent.archive.index_lookup import IndexReader, contains
from agent.archive.reader import ArchiveReader
from agent.archive.records import EventRecord, SchemaRecord, TxBeginRecord, TxEndRecord
from agent.archive.segment import open_object, read_segment_records
from agent.crypto.keyhash import KeyHasher
from agent.errors import IntegrityError
from agent.restore.candidates import INDEX_HASH_BYTES, Candidates
from agent.restore.entity import Link

log = logging.getLogger(__name__)

_LOOKUP_THREADS = 16  # concurrent index lookups (I/O bound: range reads)


@dataclass
class SegmentChoice:
    segments: list[CatalogEntry]  # in catalog order
    parts: list[CatalogEntry] = field(default_factory=list)  # snapshot parts to load
    indexes_read: int = 0
    rounds: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _indexed_links(entry: CatalogEntry, links: list[Link]) -> set[Link]:
    recorded = entry.body.get("link_columns")
    if not isinstance(recorded, dict):
        return {ln for ln in links if ln.declared}
    return {ln for ln in links if set(ln.columns) & set(recorded.get(ln.child, ()))}


class SegmentChooser:
    def __init__(
        self,
        reader: ArchiveReader,
        hasher: KeyHasher,
        candidates: Candidates,
        links: list[Link],
        scope: Iterable[str],
        read_last: bool = True,
    ) -> None:
        self.reader = reader
        # False when the catalog alone tells where the replay stops.
        self.read_last = read_last
        self.hasher = hasher
        self.candidates = candidates
        self.links = [ln for ln in links if ln.child in set(scope)]
        self.scope = set(scope)
        self._indexes_read: set[int] = set()
        # segment seq -> in-scope tables whose primary key it redefined
        self._rekeyed_in: dict[int, set[str]] = {}
        assert reader.opener is not None
        self._lookup = IndexReader(reader.store, reader.opener, reader.archive_id)

    def _always(self, segs: list[CatalogEntry], root_hash: bytes | None) -> dict[int, str]:
        out: dict[int, str] = {}
        root_table = self.candidates.root.table
        for i, e in enumerate(segs):
            tables = set(e.body.get("tables") or ())
            if e.body.get("truncate") or e.body.get("schema_change"):
                out[i] = "truncate or schema change"
            elif root_hash is None and root_table in tables:
                out[i] = "root column not indexed"
            elif not tables & self.scope:
                continue
            elif not e.body.get("old_keys_indexed"):
                # Written before key-changing updates were indexed under their old
                # key: the index cannot say where a candidate's key changed.
                out[i] = "old keys not indexed"
            elif any(ln.child in tables for ln in set(self.links) - _indexed_links(e, self.links)):
                out[i] = "link columns not indexed"
        if segs and self.read_last:
            out.setdefault(len(segs) - 1, "last segment of the plan")
        return out

    def _parts_always(self, parts: list[CatalogEntry], root_hash: bytes | None) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, p in enumerate(parts):
            table = p.body.get("table")
            if p.body.get("index_object") is None:
                out[i] = "snapshot part not indexed"
            elif root_hash is None and table == self.candidates.root.table:
                out[i] = "root column not indexed"
            elif any(ln.child == table for ln in set(self.links) - _indexed_links(p, self.links)):
                out[i] = "link columns not indexed"
        return out

    def _ask(self, entries: list[CatalogEntry], wanted: set[bytes]) -> list[bool]:
        """_holds_any for each entry, a few at a time: each lookup is two or three
        small range reads, so on S3 it is round trips, not bytes, that cost."""
        if len(entries) < 2:
            return [self._holds_any(e, wanted) for e in entries]
        with ThreadPoolExecutor(max_workers=_LOOKUP_THREADS) as pool:
            return list(pool.map(lambda e: self._holds_any(e, wanted), entries))

    def _holds_any(self, e: CatalogEntry, wanted: set[bytes]) -> bool:
        """Whether the segment's index holds one of the wanted hashes."""
        key = e.body["index_object"]
        self._indexes_read.add(e.seq)
        size = e.body.get("index_size")
        assert self.reader.opener is not None
        if isinstance(size, int):
            return bool(self._lookup.present(key, size, e.body["index_digest"], wanted))
        data = self.reader.fetch(key, e.body["index_digest"])
        index = b"".join(open_object(data, self.reader.opener, self.reader.archive_id, key))
        if len(index) % INDEX_HASH_BYTES:
            raise IntegrityError(f"{key}: index length is not a multiple of 8")
        return any(contains(index, h) for h in wanted)

    def choose(
        self, segs: list[CatalogEntry], parts: list[CatalogEntry] | None = None
    ) -> SegmentChoice:
        """The segments, and the snapshot parts (of in-scope tables), to read."""
        parts = parts or []
        root_hash = self.candidates.root_key_hash(self.hasher)
        always = self._always(segs, root_hash)
        unindexed = {i for i, e in enumerate(segs) if e.body.get("index_object") is None}
        selected: set[int] = set(always) | unindexed
        part_always = self._parts_always(parts, root_hash)
        parts_selected: set[int] = set(part_always)
        reasons: dict[str, int] = {}
        for why in [*always.values(), *part_always.values()]:
            reasons[why] = reasons.get(why, 0) + 1
        read: set[int] = set()
        parts_read: set[int] = set()
        wanted: set[bytes] = {root_hash} if root_hash is not None else set()
        wanted |= self.candidates.new_hashes(self.hasher)
        choice = SegmentChoice([])
        while True:
            choice.rounds += 1
            if wanted:
                ask_parts = [i for i in range(len(parts)) if i not in parts_selected]
                ask_segs = [
                    i
                    for i, e in enumerate(segs)
                    if i not in selected and self.scope & set(e.body.get("tables") or ())
                ]
                asked = [parts[i] for i in ask_parts] + [segs[i] for i in ask_segs]
                hits = self._ask(asked, wanted)
                for i, hit in zip(ask_parts, hits[: len(ask_parts)], strict=True):
                    if hit:
                        parts_selected.add(i)
                        reasons["snapshot index"] = reasons.get("snapshot index", 0) + 1
                for i, hit in zip(ask_segs, hits[len(ask_parts) :], strict=True):
                    if hit:
                        selected.add(i)
                        reasons["index"] = reasons.get("index", 0) + 1
            pending_parts = sorted(parts_selected - parts_read)
            pending = sorted(selected - read)
            if not pending and not pending_parts:
                break
            for i in pending_parts:
                parts_read.add(i)
                self._observe(parts[i])
            while pending:
                i = pending.pop(0)
                read.add(i)
                starts_inside, ends_inside = self._observe(segs[i])
                for j in self._after_rekey(segs, i, selected):
                    selected.add(j)
                    pending.append(j)
                    reasons["key redefined"] = reasons.get("key redefined", 0) + 1
                for j, crossing in ((i - 1, starts_inside), (i + 1, ends_inside)):
                    if not crossing or not 0 <= j < len(segs) or j in selected:
                        continue
                    if "continues" in segs[max(i, j)].body:
                        continue  # the later one names what crosses: no need to read it
                    selected.add(j)
                    pending.append(j)
                    reasons["transaction crosses"] = reasons.get("transaction crosses", 0) + 1
            self.candidates.propagate()
            wanted = self.candidates.new_hashes(self.hasher)
        choice.segments = [segs[i] for i in sorted(selected)]
        choice.parts = [parts[i] for i in sorted(parts_selected)]
        choice.indexes_read = len(self._indexes_read)
        choice.reasons = reasons
        log.info(
            "entity restore reads %d of %d segments and %d of %d snapshot parts (%s)",
            len(selected), len(segs), len(parts_selected), len(parts), reasons,
        )
        return choice

    def _after_rekey(self, segs: list[CatalogEntry], i: int, selected: set[int]) -> list[int]:
        """Segments after `i` to read because `i` redefined an in-scope table's key.

        Their index entries hash the new key (columns or names); the
        candidates know the rows under the snapshot's key, so the index cannot
        be asked: every later segment holding the table is read.
        """
        tables = self._rekeyed_in.pop(segs[i].seq, set())
        return [
            j
            for j in range(i + 1, len(segs))
            if j not in selected and tables & set(segs[j].body.get("tables") or ())
        ]

    def _observe(self, e: CatalogEntry) -> tuple[bool, bool]:
        """Feed every row image of in-scope tables to the candidates.

        Returns whether a transaction was already open when the segment began
        and whether one is still open at its end (the neighbour then holds
        the rest of it).
        """
        key = e.body["object"]
        data = self.reader.fetch(key, e.body["digest"])
        assert self.reader.opener is not None
        open_tx: bool | None = None  # None: no begin or end seen yet
        starts_inside = False
        for rec in read_segment_records(data, self.reader.opener, self.reader.archive_id, key):
            if isinstance(rec, TxBeginRecord):
                open_tx = True
            elif isinstance(rec, TxEndRecord):
                if open_tx is None:
                    starts_inside = True
                open_tx = False
            elif isinstance(rec, SchemaRecord):
                name = rec.table.qualified
                shape = self.candidates.shapes.get(name)
                if name in self.scope and shape is not None and (
                    tuple(rec.table.primary_key) != tuple(shape.key)
                ):
                    self._rekeyed_in.setdefault(e.seq, set()).add(name)
            elif isinstance(rec, EventRecord):
                if open_tx is None:
                    starts_inside = True
                    open_tx = True
                doc = json.loads(rec.envelope)
                src = doc["source"]
                table = f"{src['schema']}.{src['table']}"
                if table in self.scope:
                    for image in ("key", "before", "after"):
                        self.candidates.observe(table, doc.get(image))
        return starts_inside, bool(open_tx)
