"""Reading the archive back: verified catalog, then whole transactions in order.

Transactions are released only when their end record has been read, so a
reader is transaction-consistent even when a transaction spans segments or
was cut by a crash (its begin is then followed by a fresh begin of the
redelivered copy, and the cut one is dropped). Redelivered transactions
(at-least-once) are dropped by position. A large transaction's events spill
to a temporary file instead of growing the heap.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from agent.archive import catalog
from agent.archive.catalog import CatalogEntry
from agent.archive.records import (
    EventRecord,
    SchemaRecord,
    TxBeginRecord,
    TxEndRecord,
    frames,
)
from agent.archive.segment import read_segment_records
from agent.checkpoint import position_from_json
from agent.crypto.datakeys import DataKeyOpener
from agent.crypto.keyfiles import VerifyKey
from agent.errors import IntegrityError
from agent.events import Position, TableSchema
from connectors.base import ObjectStore

_LEN = struct.Struct(">I")


class TxEvents:
    """Event envelopes of one transaction: in memory up to a bound, then on disk.

    On disk each envelope is length-prefixed; writes are gathered into ~1 MiB
    and the file is read back a block at a time (records.frames): a write and
    two reads per event cost more than everything else the reader does with it.
    """

    _BLOCK = 1024 * 1024

    def __init__(self, memory_limit: int = 8 * 1024 * 1024) -> None:
        self._mem: list[bytes] = []
        self._mem_bytes = 0
        self._limit = memory_limit
        self._file: IO[bytes] | None = None
        self.count = 0

    def add(self, envelope: bytes) -> None:
        self.count += 1
        self._mem.append(envelope if self._file is None else _LEN.pack(len(envelope)) + envelope)
        self._mem_bytes += len(envelope)
        if self._file is not None:
            if self._mem_bytes >= self._BLOCK:
                self._spill()
        elif self._mem_bytes > self._limit:
            # Lives as long as the transaction; closed by close().
            self._file = tempfile.TemporaryFile(prefix="changevault-tx-")  # noqa: SIM115
            self._mem = [_LEN.pack(len(e)) + e for e in self._mem]
            self._spill()

    def _spill(self) -> None:
        assert self._file is not None
        self._file.write(b"".join(self._mem))
        self._mem, self._mem_bytes = [], 0

    def __iter__(self) -> Iterator[bytes]:
        if self._file is None:
            yield from self._mem
            return
        if self._mem:
            self._spill()
        self._file.seek(0)
        for _length, envelope in frames(self._file, _LEN, 1 << 32):
            yield envelope

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class ArchivedTx:
    position: Position
    txid: str
    commit_ts: str  # ISO 8601
    events: TxEvents
    schemas: list[TableSchema] = field(default_factory=list)


def segment_entries(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    return [e for e in entries if e.kind == catalog.SEGMENT]


class ArchiveReader:
    def __init__(
        self,
        store: ObjectStore,
        trusted: Mapping[str, VerifyKey],
        opener: DataKeyOpener | None = None,
    ) -> None:
        self.store = store
        self.trusted = trusted
        self.opener = opener
        self._entries: list[CatalogEntry] | None = None

    def entries(self) -> list[CatalogEntry]:
        if self._entries is None:
            self._entries = list(catalog.read_chain(self.store, self.trusted))
            if not self._entries:
                raise IntegrityError(f"{self.store.url}: the archive has no catalog")
        return self._entries

    @property
    def archive_id(self) -> str:
        return self.entries()[0].archive_id

    def fetch(self, key: str, digest: str) -> bytes:
        """An object's bytes, checked against the digest the catalog signed."""
        data = self.store.get(key)  # ObjectMissing (exit 4) when it is gone
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{key}: content does not match its catalog digest")
        return data

    def transactions(
        self, segments: list[CatalogEntry], sparse: bool = False
    ) -> Iterator[ArchivedTx]:
        """Complete transactions of these segments, in commit order, each once.

        `segments` is normally a contiguous run of the archive's segments.
        With `sparse` it may skip segments (an entity restore reads only
        those its indexes select): a transaction already open when a segment
        begins is then taken from the catalog's `continues` field, and one
        still open when the reader jumps ahead is released if the catalog
        shows it ended in a skipped segment — its events there are of no
        interest to such a reader — or dropped as cut by a crash.
        """
        if self.opener is None:
            raise IntegrityError("reading segments needs the private key (archive.key)")
        following = _following(self.entries()) if sparse else {}
        last: tuple[int, ...] | None = None
        open_tx: ArchivedTx | None = None
        pending_schemas: list[TableSchema] = []
        prev: CatalogEntry | None = None

        def release(tx: ArchivedTx) -> bool:
            nonlocal last
            if last is not None and tx.position.sort_key <= last:
                tx.events.close()  # delivered again after a restart
                return False
            last = tx.position.sort_key
            return True

        for entry in segments:
            if sparse and (prev is None or _seq(following.get(prev.seq)) != entry.seq):
                fate = _fate(following, prev, open_tx, entry)
                if open_tx is not None and fate != "joins":
                    tx, open_tx = open_tx, None
                    if fate == "ends" and release(tx):
                        yield tx
                    tx.events.close()
                if open_tx is None:
                    open_tx = _continued(entry)
            prev = entry
            key = entry.body["object"]
            data = self.fetch(key, entry.body["digest"])
            for rec in read_segment_records(data, self.opener, self.archive_id, key):
                if isinstance(rec, EventRecord):
                    if open_tx is not None:
                        open_tx.events.add(rec.envelope)
                elif isinstance(rec, TxBeginRecord):
                    if open_tx is not None:  # cut by a crash; its redelivery follows
                        open_tx.events.close()
                    open_tx = ArchivedTx(
                        rec.position,
                        rec.txid,
                        rec.commit_ts.isoformat(),
                        TxEvents(),
                        pending_schemas,
                    )
                    pending_schemas = []
                elif isinstance(rec, TxEndRecord):
                    ended, open_tx = open_tx, None
                    if ended is None:
                        continue
                    if release(ended):
                        yield ended
                    ended.events.close()
                elif isinstance(rec, SchemaRecord):
                    pending_schemas.append(rec.table)
        if open_tx is not None:
            if sparse and _fate(following, prev, open_tx, None) == "ends" and release(open_tx):
                yield open_tx
            open_tx.events.close()


def _following(entries: list[CatalogEntry]) -> dict[int, CatalogEntry]:
    """Each segment entry's successor among the archive's segments, by seq."""
    order = segment_entries(entries)
    return {a.seq: b for a, b in itertools.pairwise(order)}


def _seq(entry: CatalogEntry | None) -> int | None:
    return None if entry is None else entry.seq


def _continues(entry: CatalogEntry, tx: ArchivedTx) -> bool:
    c = entry.body.get("continues")
    return (
        isinstance(c, dict)
        and c.get("txid") == tx.txid
        and position_from_json(c["position"]).sort_key == tx.position.sort_key
    )


def _fate(
    following: dict[int, CatalogEntry],
    prev: CatalogEntry | None,
    tx: ArchivedTx | None,
    upcoming: CatalogEntry | None,
) -> str:
    """What became of `tx`, open at the end of `prev`, as far as the catalog says.

    "joins": `upcoming` still continues it (keep collecting); "ends": a skipped
    segment that continues it holds its end; "cut": the chain of continuing
    segments stops without an end (a crash; the redelivered copy follows), or
    the archive predates the `continues` field.
    """
    if tx is None or prev is None:
        return "cut"
    e = following.get(prev.seq)
    while e is not None and _continues(e, tx):
        if upcoming is not None and e.seq == upcoming.seq:
            return "joins"
        if int(e.body.get("tx_ends", 0)) >= 1:
            return "ends"
        e = following.get(e.seq)
    return "cut"


def _continued(entry: CatalogEntry) -> ArchivedTx | None:
    """The transaction a segment begins inside of, from its catalog entry."""
    c = entry.body.get("continues")
    if not isinstance(c, dict):
        return None
    return ArchivedTx(
        position_from_json(c["position"]), str(c["txid"]), str(c["commit_ts"]), TxEvents()
    )


def entry_position(entry: CatalogEntry, field_name: str) -> Position | None:
    raw = entry.body.get(field_name)
    return None if raw is None else position_from_json(raw)


@dataclass
class SnapshotInfo:
    snapshot_id: str
    position: Position
    started: str
    begin: CatalogEntry
    parts: list[CatalogEntry]
    end: CatalogEntry

    @property
    def tables(self) -> list[TableSchema]:
        from agent.archive.records import schema_from_json

        return [schema_from_json(t) for t in self.begin.body["tables"]]


def complete_snapshots(entries: list[CatalogEntry]) -> list[SnapshotInfo]:
    """Snapshots with begin, parts and end entries; interrupted ones are left out."""
    begins: dict[str, CatalogEntry] = {}
    parts: dict[str, list[CatalogEntry]] = {}
    done: list[SnapshotInfo] = []
    for e in entries:
        sid = str(e.body.get("snapshot_id"))
        if e.kind == catalog.SNAPSHOT_BEGIN:
            begins[sid] = e
            parts[sid] = []
        elif e.kind == catalog.SNAPSHOT_PART and sid in parts:
            parts[sid].append(e)
        elif e.kind == catalog.SNAPSHOT_END and sid in begins:
            b = begins[sid]
            pos = position_from_json(b.body["position"])
            done.append(SnapshotInfo(sid, pos, b.body["started"], b, parts[sid], e))
    return done


def snapshot_envelopes(
    reader: ArchiveReader,
    snap: SnapshotInfo,
    tables: set[str] | None = None,
    parts: list[CatalogEntry] | None = None,
) -> Iterator[bytes]:
    """The snapshot's `r` event envelopes, table by table, part by part
    (`parts`: only these, e.g. those an entity restore's indexes chose)."""
    if reader.opener is None:
        raise IntegrityError("reading a snapshot needs the private key (archive.key)")
    for part in snap.parts if parts is None else parts:
        if tables is not None and part.body["table"] not in tables:
            continue
        key = part.body["object"]
        data = reader.fetch(key, part.body["digest"])
        for rec in read_segment_records(data, reader.opener, reader.archive_id, key):
            if isinstance(rec, EventRecord):
                yield rec.envelope
