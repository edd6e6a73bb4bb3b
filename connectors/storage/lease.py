"""A lease in the archive so that two agents never write the same archive.

The lease is a sequence of immutable records `leases/<name>/<epoch>`, each
created with a create-only put. Whoever creates epoch N+1 holds the lease
until that record's `expires_at`:

- acquire: read the newest record; if it is live and someone else's, refuse
  (LeaseHeld, exit 3, naming the holder and the expiry); otherwise create the
  next epoch. Of two agents racing for the same epoch the store lets exactly
  one create it, so takeover of an expired lease is race-free.
- renew: the holder creates the next epoch (no listing needed). If that epoch
  already exists someone took the lease over: LeaseLost, stop writing.
- release: a record marked released, so the next agent need not wait.

Nothing is ever overwritten or deleted, so the agent's create-only
credentials suffice; `expire` may prune records older than the newest.
Expiry is judged on the reader's clock against the holder's, so a taker
waits `grace` seconds past `expires_at` to absorb clock skew.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from agent.errors import DecodeError, ServiceError, UsageError
from connectors.base import ObjectExists, ObjectStore

LEASE_PREFIX = "leases/"
_FORMAT = 1
_RACE_ATTEMPTS = 5


class LeaseHeld(ServiceError):
    """Another agent holds a live lease on this archive (exit 3)."""


class LeaseLost(ServiceError):
    """Our lease was taken over or could not be renewed in time: stop writing (exit 3)."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    name: str
    epoch: int
    owner_id: str
    host: str
    pid: int
    acquired_at: float  # unix seconds, when this owner took the lease
    expires_at: float  # unix seconds, on the holder's clock
    released: bool = False

    def live(self, now: float, grace: float = 0.0) -> bool:
        return not self.released and now < self.expires_at + grace

    def describe(self) -> str:
        return f"agent {self.owner_id} (host {self.host}, pid {self.pid})"

    def to_bytes(self) -> bytes:
        return json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LeaseRecord:
        try:
            doc = json.loads(data)
            if doc.pop("format") != _FORMAT:
                raise ValueError("unknown format")
            return cls(**doc)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise DecodeError(f"{where}: expected a lease record, found malformed data") from None


class ArchiveLease:
    """Exclusive right of one `owner_id` to write the archive in `store` under `name`."""

    def __init__(
        self,
        store: ObjectStore,
        name: str,
        owner_id: str,
        ttl: float,
        *,
        grace: float = 5.0,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"lease name: expected one path component, found {name!r}")
        if ttl <= 0 or grace < 0:
            raise UsageError(f"lease {name}: expected ttl > 0 and grace >= 0")
        self.store = store
        self.name = name
        self.owner_id = owner_id
        self.ttl = ttl
        self.grace = grace
        self._clock = clock
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._held: LeaseRecord | None = None

    @property
    def held(self) -> LeaseRecord | None:
        """The record we last created, if we hold the lease."""
        return self._held

    def _key(self, epoch: int) -> str:
        return f"{LEASE_PREFIX}{self.name}/{epoch:012d}"

    def _read(self, key: str) -> LeaseRecord:
        return LeaseRecord.from_bytes(self.store.get(key), f"{self.store.url} {key}")

    def current(self) -> LeaseRecord | None:
        """The newest lease record, whoever wrote it."""
        newest = None
        for info in self.store.list(f"{LEASE_PREFIX}{self.name}/"):
            newest = info.key  # zero-padded epochs: listing order is epoch order
        return None if newest is None else self._read(newest)

    def acquire(self) -> LeaseRecord:
        """Take the lease, or raise LeaseHeld naming the live holder."""
        for _ in range(_RACE_ATTEMPTS):
            now = self._clock()
            cur = self.current()
            if cur is not None and cur.owner_id != self.owner_id and cur.live(now, self.grace):
                raise LeaseHeld(
                    f"archive {self.store.url} is leased to {cur.describe()} until "
                    f"{_iso(cur.expires_at)} ({cur.expires_at + self.grace - now:.0f}s left); "
                    "another agent is writing it: stop that agent or wait for the lease to expire"
                )
            record = LeaseRecord(
                name=self.name,
                epoch=0 if cur is None else cur.epoch + 1,
                owner_id=self.owner_id,
                host=self._host,
                pid=self._pid,
                acquired_at=now,
                expires_at=now + self.ttl,
            )
            try:
                self.store.create(self._key(record.epoch), record.to_bytes())
            except ObjectExists:
                continue  # another agent created this epoch first: look again
            self._held = record
            return record
        raise LeaseHeld(
            f"archive {self.store.url}: lease {self.name} changed hands {_RACE_ATTEMPTS} times "
            "while we tried to take it; another agent is contending for it"
        )

    def renew(self) -> LeaseRecord:
        """Extend our lease by creating the next epoch; LeaseLost if someone took it."""
        held = self._require_held()
        now = self._clock()
        record = replace(held, epoch=held.epoch + 1, expires_at=now + self.ttl)
        try:
            self.store.create(self._key(record.epoch), record.to_bytes())
        except ObjectExists:
            taker = self._read(self._key(record.epoch))
            if self._is_ours(taker, held):
                # An earlier renewal landed but its answer was lost (the store
                # failed the call after writing): ours, so renew past it.
                self._held = taker
                return self.renew()
            self._held = None
            raise LeaseLost(
                f"archive {self.store.url}: lease {self.name} was taken over by "
                f"{taker.describe()} at {_iso(taker.acquired_at)}; stopping writes"
            ) from None
        self._held = record
        return record

    def _is_ours(self, record: LeaseRecord, held: LeaseRecord) -> bool:
        return (record.owner_id, record.host, record.pid, record.acquired_at, record.released) == (
            held.owner_id, held.host, held.pid, held.acquired_at, False
        )

    def ensure_valid(self) -> None:
        """Raise LeaseLost unless our lease is unexpired on our own clock."""
        held = self._require_held()
        if not held.live(self._clock()):
            raise LeaseLost(
                f"archive {self.store.url}: lease {self.name} expired at "
                f"{_iso(held.expires_at)} without renewal; stopping writes"
            )

    def release(self) -> None:
        """Hand the lease back so the next agent need not wait out the ttl."""
        held = self._held
        if held is None:
            return
        self._held = None
        record = replace(held, epoch=held.epoch + 1, expires_at=self._clock(), released=True)
        # ObjectExists: already taken over, nothing left to release.
        with contextlib.suppress(ObjectExists):
            self.store.create(self._key(record.epoch), record.to_bytes())

    def _require_held(self) -> LeaseRecord:
        if self._held is None:
            raise LeaseLost(f"archive {self.store.url}: lease {self.name} is not held")
        return self._held
