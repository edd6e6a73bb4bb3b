"""Lease renewal when a store wrote the record but lost the answer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from connectors.storage.lease import ArchiveLease, LeaseLost
from connectors.storage.local import LocalObjectStore


def test_a_renewal_that_landed_without_an_answer_is_still_ours(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    now = [1000.0]
    lease = ArchiveLease(store, "writer", "agent-1", ttl=60, clock=lambda: now[0], host="h", pid=1)
    held = lease.acquire()
    # The store created epoch 1 for our renewal, then the call failed.
    landed = replace(held, epoch=held.epoch + 1, expires_at=now[0] + 60)
    store.create(f"leases/writer/{landed.epoch:012d}", landed.to_bytes())
    now[0] += 20
    renewed = lease.renew()
    assert renewed.epoch == held.epoch + 2
    assert renewed.owner_id == "agent-1"


def test_a_record_of_another_agent_is_a_takeover(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    lease = ArchiveLease(store, "writer", "agent-1", ttl=60, clock=lambda: 1000.0, host="h", pid=1)
    held = lease.acquire()
    other = replace(held, epoch=held.epoch + 1, owner_id="agent-2", host="h2", pid=2)
    store.create(f"leases/writer/{other.epoch:012d}", other.to_bytes())
    with pytest.raises(LeaseLost, match="taken over"):
        lease.renew()
