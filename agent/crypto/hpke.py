"""RFC 9180 HPKE, base mode, single shot: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-GCM.

This is a thin adapter over `cryptography`'s own HPKE (`hazmat.primitives.hpke`,
since cryptography 47) so that no HPKE code of ours sits on the data path; see
docs/decisions/0002-sealing.md. The sealed form is the one RFC 9180 section
6.1 describes for single-shot APIs: `enc (32 bytes) || ciphertext` with empty
associated data; context binding goes into `info`.

Tests check this against the published RFC 9180 test vectors through an
independent reference implementation (tests/unit/test_crypto_hpke.py).
"""

from __future__ import annotations

import enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent.errors import IntegrityError

ENC_BYTES = 32  # Nenc of DHKEM(X25519, HKDF-SHA256)
TAG_BYTES = 16


class HpkeAead(enum.Enum):
    """The AEADs allowed here (RFC 9180 aead_id 0x0001 and 0x0002)."""

    AES_128_GCM = 1
    AES_256_GCM = 2


def _suite(aead: HpkeAead) -> hpke.Suite:
    which = hpke.AEAD.AES_256_GCM if aead is HpkeAead.AES_256_GCM else hpke.AEAD.AES_128_GCM
    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, which)


def seal_base(
    recipient: X25519PublicKey,
    plaintext: bytes,
    info: bytes,
    aead: HpkeAead = HpkeAead.AES_256_GCM,
) -> bytes:
    """SealBase(pkR, info, aad="", pt) -> enc || ct, with a fresh ephemeral key."""
    return _suite(aead).encrypt(plaintext, recipient, info=info)


def open_base(
    recipient: X25519PrivateKey,
    sealed: bytes,
    info: bytes,
    aead: HpkeAead = HpkeAead.AES_256_GCM,
) -> bytes:
    """OpenBase(enc, skR, info, aad="", ct); IntegrityError on any failure."""
    if len(sealed) < ENC_BYTES + TAG_BYTES:
        raise IntegrityError(
            f"HPKE: expected at least {ENC_BYTES + TAG_BYTES} sealed bytes, found {len(sealed)}"
        )
    try:
        return _suite(aead).decrypt(sealed, recipient, info=info)
    except (InvalidTag, ValueError):
        # A wrong private key, a changed byte and a low-order ephemeral point
        # all look the same from here, on purpose.
        raise IntegrityError("HPKE: wrapped key did not open (wrong key or altered)") from None
