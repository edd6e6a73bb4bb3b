"""The catalog: one signed object per entry, chained by hashes.

Entry `n` lives at `catalog/<n:020d>.json`, is created with a create-only put
(two writers cannot both append entry n), names the SHA-256 of entry n-1, the
archive id and the retention horizon, and is signed with the agent's
`signing.key`. `verify` walks the chain and detects reordering, replay,
removal and edits; restore uses it to find segments by time or position
without opening them.

Every reader reads the whole chain, and an entry is one object: on S3 one
round trip each, and a busy agent appends one every `segment_max_age`
(8,640 a day at 10 s). So the writer also packs each full run of 32 entries,
and of 1,024, into one object, `catalog/packs/<first:020d>-<last:020d>.zst`: the
entries' exact bytes, zstd-compressed, in order. A pack is derived data and
adds no trust: each entry in it is checked exactly as if read alone (its
signature, its seq, the hash chain), so a reader takes the pack for a run
whose entries are all listed and the single objects for the rest (a pack not
written yet, or removed by expire).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import zstandard

from agent.crypto import signing
from agent.crypto.keyfiles import SigningKey, VerifyKey
from agent.errors import IntegrityError, ServiceError
from connectors.base import ObjectExists, ObjectStore

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "catalog/"
PACK_PREFIX = f"{PREFIX}packs/"
# Entries per pack, two levels: a small pack every 32 entries keeps the tail a
# reader fetches one by one short (at most 31), a large one every 1,024 keeps
# the number of objects of an old archive low; readers take the largest.
PACK_SIZES = (32, 1024)
_WINDOW = 64  # catalog objects fetched at a time (at most 64 packs of entries in memory)
_PACK_MAGIC = b"CVPACK1\n"
_PACK_KEY = re.compile(r"catalog/packs/(\d{20})-(\d{20})\.zst")
_LEN = struct.Struct(">I")
_T = TypeVar("_T")
_R = TypeVar("_R")
_CONTEXT = "catalog-entry"

# Entry kinds. A reader that meets a kind it does not know fails loudly
# (exit 4) rather than skipping something that might matter for a restore.
GENESIS = "genesis"
SEGMENT = "segment"
SNAPSHOT_BEGIN = "snapshot_begin"
SNAPSHOT_PART = "snapshot_part"
SNAPSHOT_END = "snapshot_end"
RETENTION = "retention"
AUDIT = "audit"
GAP = "gap"
KINDS = frozenset(
    {GENESIS, SEGMENT, SNAPSHOT_BEGIN, SNAPSHOT_PART, SNAPSHOT_END, RETENTION, AUDIT, GAP}
)


def entry_key(seq: int) -> str:
    return f"{PREFIX}{seq:020d}.json"


def pack_key(first: int, last: int) -> str:
    return f"{PACK_PREFIX}{first:020d}-{last:020d}.zst"


def pack_range(key: str) -> tuple[int, int] | None:
    """(first, last) seq of a pack's key; None for any other key."""
    m = _PACK_KEY.fullmatch(key)
    return None if m is None else (int(m[1]), int(m[2]))


def build_pack(raws: list[bytes]) -> bytes:
    body = b"".join(_LEN.pack(len(r)) + r for r in raws)
    return _PACK_MAGIC + zstandard.ZstdCompressor(level=3).compress(body)


def open_pack(data: bytes, key: str, count: int) -> list[bytes]:
    """The entries' bytes a pack holds (exactly `count`); IntegrityError if garbled."""
    try:
        if not data.startswith(_PACK_MAGIC):
            raise ValueError("magic")
        body = zstandard.ZstdDecompressor().decompress(
            data[len(_PACK_MAGIC) :], max_output_size=count * 1024 * 1024
        )
        raws, pos = [], 0
        while pos < len(body):
            (n,) = _LEN.unpack_from(body, pos)
            raws.append(body[pos + 4 : pos + 4 + n])
            pos += 4 + n
        if pos != len(body) or len(raws) != count:
            raise ValueError("length")
    except (ValueError, struct.error, zstandard.ZstdError):
        raise IntegrityError(f"{key}: not a catalog pack (garbled)") from None
    return raws


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    seq: int
    kind: str
    archive_id: str
    prev_hash: str  # hex SHA-256 of the previous entry object; "" for genesis
    created: str  # ISO 8601 UTC
    agent_id: str
    retention_horizon: str | None  # oldest instant the archive promises to restore
    body: dict[str, Any]  # kind-specific fields, documented in docs/archive-format.md
    signer: str = ""  # key id of the signature (filled when read)
    digest: str = ""  # hex SHA-256 of the stored object (filled when written/read)

    def payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "seq": self.seq,
            "kind": self.kind,
            "archive_id": self.archive_id,
            "prev_hash": self.prev_hash,
            "created": self.created,
            "agent_id": self.agent_id,
            "retention_horizon": self.retention_horizon,
            "body": self.body,
        }


def seal_entry(entry: CatalogEntry, signer: SigningKey) -> bytes:
    data = canonical(entry.payload())
    sig = signing.sign(signer, _CONTEXT, data)
    doc = {
        "entry": entry.payload(),
        "key_id": signer.key_id,
        "sig": base64.b64encode(sig).decode(),
    }
    return canonical(doc)


def open_entry(raw: bytes, trusted: Mapping[str, VerifyKey], where: str) -> CatalogEntry:
    try:
        doc = json.loads(raw)
        payload = doc["entry"]
        key_id = str(doc["key_id"])
        sig = base64.b64decode(doc["sig"], validate=True)
        if payload.get("format") != FORMAT:
            raise IntegrityError(f"{where}: unsupported catalog format {payload.get('format')!r}")
    except IntegrityError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise IntegrityError(f"{where}: not a catalog entry (garbled)") from None
    try:
        signing.verify(trusted, key_id, _CONTEXT, canonical(payload), sig)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    try:
        entry = CatalogEntry(
            seq=int(payload["seq"]),
            kind=str(payload["kind"]),
            archive_id=str(payload["archive_id"]),
            prev_hash=str(payload["prev_hash"]),
            created=str(payload["created"]),
            agent_id=str(payload["agent_id"]),
            retention_horizon=payload["retention_horizon"],
            body=dict(payload["body"]),
            signer=key_id,
            digest=hashlib.sha256(raw).hexdigest(),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise IntegrityError(f"{where}: catalog entry lacks required fields") from None
    if entry.kind not in KINDS:
        raise IntegrityError(f"{where}: unknown catalog entry kind {entry.kind!r}")
    return entry


class CatalogWriter:
    """Appends entries; the only writer of an archive (guarded by the lease)."""

    def __init__(
        self,
        store: ObjectStore,
        signer: SigningKey,
        archive_id: str,
        agent_id: str,
        tail: CatalogEntry | None,
        pack_sizes: tuple[int, ...] = PACK_SIZES,
    ) -> None:
        self.store = store
        self.signer = signer
        self.archive_id = archive_id
        self.agent_id = agent_id
        self.tail = tail
        self.pack_sizes = pack_sizes
        self._recent: dict[int, bytes] = {}  # the largest pack's entries written by us

    def append(
        self, kind: str, body: dict[str, Any], created: str, retention_horizon: str | None = None
    ) -> CatalogEntry:
        seq = 0 if self.tail is None else self.tail.seq + 1
        prev = "" if self.tail is None else self.tail.digest
        horizon = retention_horizon
        if horizon is None and self.tail is not None:
            horizon = self.tail.retention_horizon
        entry = CatalogEntry(
            seq, kind, self.archive_id, prev, created, self.agent_id, horizon, body
        )
        raw = seal_entry(entry, self.signer)
        try:
            self.store.create(entry_key(seq), raw)
        except ObjectExists:
            raise IntegrityError(
                f"catalog entry {seq} was written by someone else: is another agent "
                "writing this archive?"
            ) from None
        self.tail = dataclasses.replace(
            entry, signer=self.signer.key_id, digest=hashlib.sha256(raw).hexdigest()
        )
        self._recent[seq] = raw
        for size in self.pack_sizes:
            if (seq + 1) % size == 0:
                self._pack(seq + 1 - size, seq)
        if (seq + 1) % max(self.pack_sizes) == 0:
            self._recent = {}
        return self.tail

    def _pack(self, first: int, last: int) -> None:
        """Pack entries first..last, the entry just appended last. Best effort: the
        entries are already durable, a missing pack only costs readers round trips."""
        try:
            raws = self._earlier(first, last)
            self.store.create(pack_key(first, last), build_pack(raws))
        except ObjectExists:
            pass  # packed already (a restarted writer)
        except (ServiceError, IntegrityError) as exc:  # e.g. an entry expired meanwhile
            log.warning("catalog entries %s..%s not packed: %s", first, last, exc)

    def _earlier(self, first: int, last: int) -> list[bytes]:
        """The bytes of entries first..last: those this writer wrote are in memory; a
        restarted writer reads the others from the smallest packs, else one by one."""
        got = {s: self._recent[s] for s in range(first, last + 1) if s in self._recent}
        small = min(self.pack_sizes)
        if last + 1 - first > small and len(got) < last + 1 - first:
            for start in range(first, last + 1, small):
                end = start + small - 1
                if all(s in got for s in range(start, end + 1)):
                    continue
                key = pack_key(start, end)
                # Not packed (or unreadable): those entries are read one by one below.
                with contextlib.suppress(IntegrityError):
                    got.update(enumerate(open_pack(self.store.get(key), key, small), start))
        missing = [s for s in range(first, last + 1) if s not in got]
        got.update(zip(missing, _in_windows(self.store.get, [entry_key(s) for s in missing]),
                       strict=True))
        self._recent.update(got)  # for the larger pack that may come next
        return [got[s] for s in range(first, last + 1)]


def list_entry_keys(store: ObjectStore) -> list[str]:
    return _listing(store)[0]


def list_pack_keys(store: ObjectStore) -> list[str]:
    return _listing(store)[1]


def _listing(store: ObjectStore) -> tuple[list[str], list[str]]:
    """Entry keys and pack keys, each sorted (one listing of the prefix)."""
    entries, packs = [], []
    for o in store.list(PREFIX):
        if o.key.startswith(PACK_PREFIX):
            packs.append(o.key)
        elif o.key.endswith(".json"):
            entries.append(o.key)
    entries.sort()
    packs.sort()
    return entries, packs


def _in_windows(fetch: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
    """fetch(item) for each item, in order, a window at a time on a few threads:
    on S3 each object is a round trip, and the chain is checked in order anyway."""
    if len(items) < 2:
        yield from map(fetch, items)
        return
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i in range(0, len(items), _WINDOW):
            yield from pool.map(fetch, items[i : i + _WINDOW])


def _packed(
    store: ObjectStore, keys: list[str], seqs: dict[str, int], packs: list[str]
) -> Iterator[tuple[str, bytes]]:
    """(entry key, bytes) in order: from a pack where one covers a run of listed
    keys whole, single objects elsewhere; checked in order by the caller."""
    index = {seq: i for i, seq in enumerate(seqs[k] for k in keys)}
    runs: dict[int, tuple[str, int]] = {}  # position of the run's first key -> (pack, count)
    claimed = bytearray(len(keys))
    spans = [(span, pack) for pack in packs if (span := pack_range(pack)) is not None]
    for (first, last), pack in sorted(spans, key=lambda x: x[0][0] - x[0][1]):  # largest first
        i = index.get(first)
        if i is None:
            continue
        j = i + (last - first)
        # Keys are sorted and unique, so the run is all listed if its last one is.
        if j < len(keys) and seqs[keys[j]] == last and not any(claimed[i : j + 1]):
            runs[i] = (pack, last - first + 1)
            claimed[i : j + 1] = b"\x01" * (j + 1 - i)
    units: list[tuple[str, list[str]]] = []  # (object to fetch, the entry keys it gives)
    i = 0
    while i < len(keys):
        pack, count = runs.get(i, (keys[i], 1))
        units.append((pack, keys[i : i + count]))
        i += count

    def load(unit: tuple[str, list[str]]) -> list[bytes]:
        obj, entry_keys = unit
        data = store.get(obj)
        return open_pack(data, obj, len(entry_keys)) if obj.startswith(PACK_PREFIX) else [data]

    for (_obj, entry_keys), raws in zip(units, _in_windows(load, units), strict=True):
        yield from zip(entry_keys, raws, strict=True)


def read_chain(
    store: ObjectStore,
    trusted: Mapping[str, VerifyKey],
    start_seq: int | None = None,
    packs: bool = True,
) -> Iterator[CatalogEntry]:
    """Every entry in order, each signature and link checked as it is read
    (`packs` False: from the single objects only, as `verify` reads them).

    The first entry present must be the genesis entry, or the first one a
    later retention entry declares kept; `verify_retention_head` checks that
    once the chain is read.
    """
    prev: CatalogEntry | None = None
    listed, pack_keys = _listing(store)
    seqs = {key: int(key[len(PREFIX) : -len(".json")]) for key in listed}
    keys = [key for key, seq in seqs.items() if start_seq is None or seq >= start_seq]
    for key, raw in _packed(store, keys, seqs, pack_keys if packs else []):
        seq = seqs[key]
        entry = open_entry(raw, trusted, key)
        if entry.seq != seq:
            raise IntegrityError(f"{key}: holds entry {entry.seq} (moved or replayed)")
        if prev is not None:
            if entry.seq != prev.seq + 1:
                raise IntegrityError(f"catalog entries {prev.seq + 1}..{entry.seq - 1} are missing")
            if entry.prev_hash != prev.digest:
                raise IntegrityError(f"{key}: does not follow entry {prev.seq} (chain broken)")
            if entry.archive_id != prev.archive_id:
                raise IntegrityError(f"{key}: belongs to another archive ({entry.archive_id})")
        elif entry.seq == 0 and (entry.kind != GENESIS or entry.prev_hash):
            raise IntegrityError(f"{key}: the first entry is not a genesis entry")
        prev = entry
        yield entry


def check_packs(store: ObjectStore, entries: list[CatalogEntry]) -> int:
    """Every pack over listed entries holds exactly those entries' bytes (digests);
    the number of packs checked. For `verify`, which reads the single objects."""
    digests = {e.seq: e.digest for e in entries}
    checked = 0
    for key in list_pack_keys(store):
        span = pack_range(key)
        if span is None or span[0] not in digests:
            continue  # over expired entries: unused, removed by the next expire
        first, last = span
        for seq, raw in enumerate(open_pack(store.get(key), key, last - first + 1), first):
            if digests.get(seq) != hashlib.sha256(raw).hexdigest():
                raise IntegrityError(f"{key}: entry {seq} differs from {entry_key(seq)}")
        checked += 1
    return checked
