"""The audit record of a restore: who restored what, where, to which position, with what result.

Two forms, chosen in docs/decisions/0005-restore-audit.md:
- always, a create-only object `audit/YYYY/MM/DD/<time>-<rand>.json`, signed
  with the operator's `signing.key` (context "restore-audit") and naming the
  archive id and the catalog tail it was written against;
- and, when the archive's writer lease is free (the agent is not running),
  an `audit` entry appended to the signed catalog chain that names that
  object and its digest. A running agent holds the lease, so the restore does
  not wait for it: the object alone is the record then.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.archive import catalog
from agent.archive.access import verify_key_of
from agent.archive.writer import ArchiveWriter
from agent.crypto import signing
from agent.crypto.keyfiles import SigningKey
from agent.errors import ChangevaultError
from connectors.base import ObjectStore
from connectors.storage.lease import LeaseHeld

log = logging.getLogger(__name__)

AUDIT_PREFIX = "audit/"
CONTEXT = "restore-audit"


@dataclass(frozen=True, slots=True)
class AuditResult:
    object_key: str
    catalog_seq: int | None  # None: the lease was held (agent running); object only


def operator() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"os_user": user, "host": socket.gethostname()}


def audit_body(
    *,
    target_dsn: str,
    target_schema: str,
    scope: dict[str, Any],
    target: str,
    position: str,
    commit_ts: str,
    snapshot_id: str,
    result: str,
) -> dict[str, Any]:
    return {
        **operator(),
        "time": datetime.now(UTC).isoformat(timespec="microseconds"),
        "target_dsn": target_dsn,  # already redacted by the caller
        "target_schema": target_schema,
        "scope": scope,
        "target": target,
        "position": position,
        "commit_ts": commit_ts,
        "snapshot_id": snapshot_id,
        "result": result,
    }


def seal_audit(
    body: dict[str, Any], archive_id: str, tail_digest: str, signer: SigningKey
) -> bytes:
    payload = {"format": 1, "archive_id": archive_id, "catalog_tail": tail_digest, "audit": body}
    data = catalog.canonical(payload)
    sig = signing.sign(signer, CONTEXT, data)
    return catalog.canonical(
        {"record": payload, "key_id": signer.key_id, "sig": base64.b64encode(sig).decode()}
    )


def write_audit(
    store: ObjectStore,
    signer: SigningKey,
    archive_id: str,
    tail_digest: str,
    source_id: str,
    body: dict[str, Any],
) -> AuditResult:
    now = datetime.now(UTC)
    key = f"{AUDIT_PREFIX}{now:%Y/%m/%d}/{now:%H%M%S%f}-{secrets.token_hex(6)}.json"
    blob = seal_audit(body, archive_id, tail_digest, signer)
    store.create(key, blob)
    seq: int | None = None
    writer = ArchiveWriter(
        store, signer, verify_key_of(signer), source_id, f"restore:{body['os_user']}@{body['host']}"
    )
    try:
        writer.open()
    except LeaseHeld:
        log.info("the archive's writer lease is held (agent running): audit kept as %s", key)
        return AuditResult(key, None)
    except ChangevaultError as exc:
        log.warning("audit entry not appended to the catalog (%s); kept as %s", exc, key)
        return AuditResult(key, None)
    try:
        entry = writer.append(
            catalog.AUDIT,
            {**body, "object": key, "digest": hashlib.sha256(blob).hexdigest()},
        )
        seq = entry.seq
    except ChangevaultError as exc:
        log.warning("audit entry not appended to the catalog (%s); kept as %s", exc, key)
    finally:
        writer.close()
    return AuditResult(key, seq)
