"""The agent's handle on an archive: identity, catalog tail, lease, object creation.

Only one writer per archive: the lease (create-only epochs) is taken before
anything is written and renewed while writing; the catalog's create-only
entries catch a second writer even if the lease were ignored.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.archive import catalog
from agent.archive.catalog import CatalogEntry, CatalogWriter
from agent.checkpoint import write_atomically
from agent.crypto.keyfiles import SigningKey, VerifyKey
from agent.errors import IntegrityError, UsageError
from connectors.base import ObjectStore
from connectors.storage.lease import ArchiveLease

log = logging.getLogger(__name__)

LEASE_NAME = "writer"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def agent_identity(state_dir: Path) -> str:
    """A stable id for this agent installation (one per state_dir)."""
    path = state_dir / "agent-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ident = f"{uuid.uuid4()}"
        write_atomically(path, ident.encode(), mode=0o644)
        return ident


@dataclass
class ArchiveWriter:
    store: ObjectStore
    signer: SigningKey
    own_verify: VerifyKey
    source_id: str
    agent_id: str
    lease_ttl: float = 60.0

    def __post_init__(self) -> None:
        self.lease = ArchiveLease(self.store, LEASE_NAME, self.agent_id, self.lease_ttl)
        self.catalog: CatalogWriter | None = None
        # The archive sink and a scheduled snapshot append from two threads.
        self._lock = threading.Lock()
        self._renewed = 0.0

    @property
    def archive_id(self) -> str:
        assert self.catalog is not None
        return self.catalog.archive_id

    def open(self) -> None:
        """Take the lease, then find (or create) the catalog tail."""
        self.lease.acquire()
        self._renewed = time.monotonic()
        tail = self._find_tail()
        if tail is None:
            archive_id = str(uuid.uuid4())
            self.catalog = CatalogWriter(self.store, self.signer, archive_id, self.agent_id, None)
            self.append(catalog.GENESIS, {"source_id": self.source_id, "archive_format": 1})
            log.info("created archive %s in %s", archive_id, self.store.url)
        else:
            self.catalog = CatalogWriter(
                self.store, self.signer, tail.archive_id, self.agent_id, tail
            )

    def _find_tail(self) -> CatalogEntry | None:
        trusted = {self.own_verify.key_id: self.own_verify}
        keys = catalog.list_entry_keys(self.store)
        if not keys:
            return None
        first = catalog.open_entry(self.store.get(keys[0]), trusted, keys[0])
        if first.kind == catalog.GENESIS and first.body.get("source_id") != self.source_id:
            raise UsageError(
                f"archive {self.store.url} belongs to {first.body.get('source_id')}, "
                f"not to {self.source_id}: use another archive url"
            )
        tail = catalog.open_entry(self.store.get(keys[-1]), trusted, keys[-1])
        if tail.archive_id != first.archive_id:
            raise IntegrityError(f"{keys[-1]}: belongs to another archive ({tail.archive_id})")
        return tail

    def append(self, kind: str, body: dict[str, Any], horizon: str | None = None) -> CatalogEntry:
        assert self.catalog is not None
        with self._lock:
            self.lease.ensure_valid()
            return self.catalog.append(kind, body, now_iso(), horizon)

    def object_key(self, kind: str, suffix: str) -> str:
        now = datetime.now(UTC)
        return f"{kind}/{now:%Y/%m/%d}/{now:%H%M%S%f}-{secrets.token_hex(6)}{suffix}"

    def maybe_renew_lease(self) -> None:
        """Renew once a third of the lease time has passed (cheap to call often)."""
        with self._lock:
            if time.monotonic() - self._renewed >= self.lease_ttl / 3:
                self.lease.renew()
                self._renewed = time.monotonic()

    def close(self) -> None:
        self.lease.release()
