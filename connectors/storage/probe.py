"""`changevault check`: prove the archive store refuses to overwrite.

An S3-compatible store that ignores `If-None-Match: *` would let a retried or
rival put replace an archive object silently; the agent must not start on one.
The probe creates a fresh key, then tries to create it again with other bytes:
the second create must raise ObjectExists and the first bytes must remain.
The probe objects stay (the agent cannot delete); `expire` may remove
`_probe/` keys.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from agent.errors import ChangevaultError
from connectors.base import CheckResult, ObjectExists, ObjectStore

PROBE_PREFIX = "_probe/"


def probe_conditional_put(store: ObjectStore) -> CheckResult:
    """One `check` line: the store is writable and honours create-only puts."""
    name = "archive create-only"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"{PROBE_PREFIX}{stamp}-{secrets.token_hex(6)}"
    first, second = b"changevault probe 1\n", b"changevault probe 2\n"
    try:
        store.create(key, first)
    except ChangevaultError as exc:
        return CheckResult(name, False, f"cannot create {key} in {store.url}: {exc}")
    try:
        store.create(key, second)
    except ObjectExists:
        pass
    except ChangevaultError as exc:
        return CheckResult(name, False, f"second create of {key} in {store.url} failed: {exc}")
    else:
        return CheckResult(
            name,
            False,
            f"{store.url} accepted an overwrite of {key}: the store ignores If-None-Match; "
            "use a store that supports conditional writes",
        )
    try:
        kept = store.get(key)
    except ChangevaultError as exc:
        return CheckResult(name, False, f"cannot read back {key} from {store.url}: {exc}")
    if kept != first:
        return CheckResult(name, False, f"{store.url} replaced {key} despite refusing the put")
    return CheckResult(name, True, f"{store.url} is writable and refuses overwrites")
