"""Ed25519 signatures over canonical bytes, with key ids and domain separation.

Every signature covers `b"changevault-sig-v1\\0" || u16 len(context) || context
|| payload`: the context names what is signed ("data-key-announcement",
"catalog-entry", ...), so a signature made for one kind of object can never
be replayed as another. Verification is against a set of trusted keys
(`trusted_signing_keys`) looked up by key id.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature

from agent.crypto.keyfiles import KEY_ID_BYTES, SigningKey, VerifyKey
from agent.errors import IntegrityError

SIGNATURE_BYTES = 64
_DOMAIN = b"changevault-sig-v1\x00"
ENVELOPE_VERSION = 1
# version (1) || signer key id (8) || signature (64) || payload
ENVELOPE_HEADER_BYTES = 1 + KEY_ID_BYTES + SIGNATURE_BYTES


def _signed_bytes(context: str, payload: bytes) -> bytes:
    ctx = context.encode("utf-8")
    return _DOMAIN + struct.pack(">H", len(ctx)) + ctx + payload


def sign(key: SigningKey, context: str, payload: bytes) -> bytes:
    """The 64-byte Ed25519 signature of `payload` under `context`."""
    return key.key.sign(_signed_bytes(context, payload))


def verify(
    trusted: Mapping[str, VerifyKey],
    signer_key_id: str,
    context: str,
    payload: bytes,
    signature: bytes,
) -> None:
    """Raise IntegrityError unless a trusted key with that id signed `payload`."""
    verify_key = trusted.get(signer_key_id)
    if verify_key is None:
        raise IntegrityError(
            f"{context}: signed by key {signer_key_id}, which is not in trusted_signing_keys"
        )
    try:
        verify_key.key.verify(signature, _signed_bytes(context, payload))
    except InvalidSignature:
        raise IntegrityError(
            f"{context}: signature by key {signer_key_id} does not verify (altered or forged)"
        ) from None


def sign_envelope(key: SigningKey, context: str, payload: bytes) -> bytes:
    """`version || signer key id || signature || payload`, for catalog entries."""
    return (
        bytes([ENVELOPE_VERSION])
        + bytes.fromhex(key.key_id)
        + sign(key, context, payload)
        + payload
    )


def open_envelope(trusted: Mapping[str, VerifyKey], context: str, blob: bytes) -> tuple[str, bytes]:
    """Verify a `sign_envelope` blob; return (signer key id, payload)."""
    if len(blob) < ENVELOPE_HEADER_BYTES:
        raise IntegrityError(
            f"{context}: expected at least {ENVELOPE_HEADER_BYTES} bytes, found {len(blob)}"
        )
    if blob[0] != ENVELOPE_VERSION:
        raise IntegrityError(
            f"{context}: expected signed envelope version {ENVELOPE_VERSION}, found {blob[0]}"
        )
    signer = blob[1 : 1 + KEY_ID_BYTES].hex()
    signature = blob[1 + KEY_ID_BYTES : ENVELOPE_HEADER_BYTES]
    payload = blob[ENVELOPE_HEADER_BYTES:]
    verify(trusted, signer, context, payload, signature)
    return signer, payload


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes for signing: sorted keys, no spaces, UTF-8.

    Floats are refused (their text form is not canonical across encoders);
    put exact numbers in as integers or decimal strings.
    """
    _reject_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        kind = "non-finite" if not math.isfinite(value) else "float"
        raise TypeError(f"canonical_json: expected int or str, found {kind} {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical_json: expected str keys, found {type(k).__name__}")
            _reject_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_floats(v)
