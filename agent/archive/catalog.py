"""The catalog: one signed object per entry, chained by hashes.

Entry `n` lives at `catalog/<n:020d>.json`, is created with a create-only put
(two writers cannot both append entry n), names the SHA-256 of entry n-1, the
archive id and the retention horizon, and is signed with the agent's
`signing.key`. `verify` walks the chain and detects reordering, replay,
removal and edits; restore uses it to find segments by time or position
without opening them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent.crypto import signing
from agent.crypto.keyfiles import SigningKey, VerifyKey
from agent.errors import IntegrityError
from connectors.base import ObjectExists, ObjectStore

FORMAT = 1
PREFIX = "catalog/"
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
    ) -> None:
        self.store = store
        self.signer = signer
        self.archive_id = archive_id
        self.agent_id = agent_id
        self.tail = tail

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
        return self.tail


def list_entry_keys(store: ObjectStore) -> list[str]:
    keys = [o.key for o in store.list(PREFIX) if o.key.endswith(".json")]
    keys.sort()
    return keys


def _fetched(
    store: ObjectStore, keys: list[str], window: int = 64
) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) in order, fetched a window at a time on a few threads: on S3
    each entry is a round trip, and the chain is checked in order anyway."""
    if len(keys) < 2:
        yield from ((key, store.get(key)) for key in keys)
        return
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i in range(0, len(keys), window):
            part = keys[i : i + window]
            yield from zip(part, pool.map(store.get, part), strict=True)


def read_chain(
    store: ObjectStore, trusted: Mapping[str, VerifyKey], start_seq: int | None = None
) -> Iterator[CatalogEntry]:
    """Every entry in order, each signature and link checked as it is read.

    The first entry present must be the genesis entry, or the first one a
    later retention entry declares kept; `verify_retention_head` checks that
    once the chain is read.
    """
    prev: CatalogEntry | None = None
    seqs = {key: int(key[len(PREFIX) : -len(".json")]) for key in list_entry_keys(store)}
    keys = [key for key, seq in seqs.items() if start_seq is None or seq >= start_seq]
    for key, raw in _fetched(store, keys):
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
