"""RFC 9180 base mode: the published vectors, and our adapter over cryptography's HPKE.

cryptography's HPKE API has no way to fix the ephemeral key or pass associated
data, so the published vectors are checked through a small independent
reference implementation of RFC 9180 written here from the RFC's pseudocode
(every intermediate value of the vectors must match), and the adapter is then
checked against that reference in both directions, including with the RFC's
own ephemeral key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from agent.crypto import hpke
from agent.crypto.hpke import HpkeAead
from agent.errors import IntegrityError

VECTORS = Path(__file__).parents[1] / "vectors" / "rfc9180-base-x25519-hkdfsha256-aesgcm.json"


# ------------------------------------------------- reference RFC 9180 (tests only)


class Rfc9180Base:
    """DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-GCM; base mode only."""

    def __init__(self, aead_id: int) -> None:
        self.aead_id = aead_id
        self.nk = 16 if aead_id == 1 else 32
        self.kem_suite = b"KEM" + struct.pack(">H", 0x0020)
        self.hpke_suite = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, aead_id)

    @staticmethod
    def _extract(salt: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()

    @staticmethod
    def _expand(prk: bytes, info: bytes, length: int) -> bytes:
        return HKDFExpand(hashes.SHA256(), length, info).derive(prk)

    def labeled_extract(self, suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return self._extract(salt, b"HPKE-v1" + suite + label + ikm)

    def labeled_expand(
        self, suite: bytes, prk: bytes, label: bytes, info: bytes, length: int
    ) -> bytes:
        return self._expand(
            prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length
        )

    def shared_secret(self, dh: bytes, enc: bytes, pk_rm: bytes) -> bytes:
        prk = self.labeled_extract(self.kem_suite, b"", b"eae_prk", dh)
        return self.labeled_expand(self.kem_suite, prk, b"shared_secret", enc + pk_rm, 32)

    def key_schedule(self, shared_secret: bytes, info: bytes) -> dict[str, bytes]:
        s = self.hpke_suite
        psk_id_hash = self.labeled_extract(s, b"", b"psk_id_hash", b"")
        info_hash = self.labeled_extract(s, b"", b"info_hash", info)
        context = b"\x00" + psk_id_hash + info_hash
        secret = self.labeled_extract(s, shared_secret, b"secret", b"")
        return {
            "key_schedule_context": context,
            "secret": secret,
            "key": self.labeled_expand(s, secret, b"key", context, self.nk),
            "base_nonce": self.labeled_expand(s, secret, b"base_nonce", context, 12),
            "exporter_secret": self.labeled_expand(s, secret, b"exp", context, 32),
        }

    def seal(
        self, pk_r: X25519PublicKey, sk_e: X25519PrivateKey, info: bytes, aad: bytes, pt: bytes
    ) -> bytes:
        enc = raw_public(sk_e.public_key())
        ss = self.shared_secret(sk_e.exchange(pk_r), enc, raw_public(pk_r))
        ks = self.key_schedule(ss, info)
        return enc + AESGCM(ks["key"]).encrypt(ks["base_nonce"], pt, aad)

    def open(self, sk_r: X25519PrivateKey, sealed: bytes, info: bytes, aad: bytes) -> bytes:
        enc, ct = sealed[:32], sealed[32:]
        pk_e = X25519PublicKey.from_public_bytes(enc)
        ss = self.shared_secret(sk_r.exchange(pk_e), enc, raw_public(sk_r.public_key()))
        ks = self.key_schedule(ss, info)
        return AESGCM(ks["key"]).decrypt(ks["base_nonce"], ct, aad)


def raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text())
    return vectors


def vector_ids() -> list[str]:
    return [f"aead{v['aead_id']}" for v in load_vectors()]


@pytest.fixture(params=load_vectors(), ids=vector_ids())
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    v: dict[str, Any] = request.param
    return v


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def aead_of(v: dict[str, Any]) -> HpkeAead:
    return HpkeAead.AES_128_GCM if v["aead_id"] == 1 else HpkeAead.AES_256_GCM


# ------------------------------------------------------------------ the vectors


def test_vector_file_holds_the_two_suites_we_need() -> None:
    vs = load_vectors()
    assert sorted((v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) for v in vs) == [
        (0, 32, 1, 1),
        (0, 32, 1, 2),
    ]
    a11 = next(v for v in vs if v["aead_id"] == 1)
    # RFC 9180 Appendix A.1.1 as printed in the RFC.
    assert a11["skRm"].startswith("4612c550263fc8ad")
    assert a11["encryptions"][0]["ct"].startswith("f938558b5d72f1a2")


def test_reference_reproduces_every_intermediate_value(vector: dict[str, Any]) -> None:
    ref = Rfc9180Base(vector["aead_id"])
    sk_e = X25519PrivateKey.from_private_bytes(h(vector["skEm"]))
    sk_r = X25519PrivateKey.from_private_bytes(h(vector["skRm"]))
    assert raw_public(sk_e.public_key()).hex() == vector["pkEm"] == vector["enc"]
    assert raw_public(sk_r.public_key()).hex() == vector["pkRm"]
    ss = ref.shared_secret(sk_e.exchange(sk_r.public_key()), h(vector["enc"]), h(vector["pkRm"]))
    assert ss.hex() == vector["shared_secret"]
    ks = ref.key_schedule(ss, h(vector["info"]))
    for name in ("key_schedule_context", "secret", "key", "base_nonce", "exporter_secret"):
        assert ks[name].hex() == vector[name], name
    seq_key = AESGCM(ks["key"])
    for seq, rec in enumerate(vector["encryptions"]):
        nonce = bytes(
            a ^ b for a, b in zip(ks["base_nonce"], (seq).to_bytes(12, "big"), strict=True)
        )
        assert nonce.hex() == rec["nonce"]
        assert seq_key.encrypt(nonce, h(rec["pt"]), h(rec["aad"])).hex() == rec["ct"]


def test_reference_single_shot_matches_first_vector_encryption(vector: dict[str, Any]) -> None:
    ref = Rfc9180Base(vector["aead_id"])
    sk_e = X25519PrivateKey.from_private_bytes(h(vector["skEm"]))
    pk_r = X25519PrivateKey.from_private_bytes(h(vector["skRm"])).public_key()
    first = vector["encryptions"][0]
    sealed = ref.seal(pk_r, sk_e, h(vector["info"]), h(first["aad"]), h(first["pt"]))
    assert sealed.hex() == vector["enc"] + first["ct"]


def test_adapter_opens_what_the_reference_sealed_with_the_rfc_ephemeral_key(
    vector: dict[str, Any],
) -> None:
    # Our adapter uses empty associated data (single-shot, context in info), so
    # the RFC's recipient and ephemeral keys and info are used with aad = "".
    ref = Rfc9180Base(vector["aead_id"])
    sk_e = X25519PrivateKey.from_private_bytes(h(vector["skEm"]))
    sk_r = X25519PrivateKey.from_private_bytes(h(vector["skRm"]))
    pt = h(vector["encryptions"][0]["pt"])
    sealed = ref.seal(sk_r.public_key(), sk_e, h(vector["info"]), b"", pt)
    assert sealed[:32].hex() == vector["enc"]
    assert hpke.open_base(sk_r, sealed, h(vector["info"]), aead_of(vector)) == pt


def test_reference_opens_what_the_adapter_sealed(vector: dict[str, Any]) -> None:
    ref = Rfc9180Base(vector["aead_id"])
    sk_r = X25519PrivateKey.from_private_bytes(h(vector["skRm"]))
    sealed = hpke.seal_base(sk_r.public_key(), b"data key bytes", b"ctx", aead_of(vector))
    assert len(sealed) == 32 + len(b"data key bytes") + 16
    assert ref.open(sk_r, sealed, b"ctx", b"") == b"data key bytes"


def test_default_suite_is_aes_256_gcm() -> None:
    sk = X25519PrivateKey.generate()
    sealed = hpke.seal_base(sk.public_key(), b"k" * 32, b"info")
    assert Rfc9180Base(2).open(sk, sealed, b"info", b"") == b"k" * 32


def test_each_seal_uses_a_fresh_ephemeral_key() -> None:
    pk = X25519PrivateKey.generate().public_key()
    assert hpke.seal_base(pk, b"x", b"i")[:32] != hpke.seal_base(pk, b"x", b"i")[:32]


@pytest.mark.parametrize(
    "how", ["wrong key", "wrong info", "flip", "truncate", "empty", "zero enc"]
)
def test_open_failures_are_integrity_errors(how: str) -> None:
    sk = X25519PrivateKey.generate()
    sealed = hpke.seal_base(sk.public_key(), b"secret", b"info")
    key, info = sk, b"info"
    if how == "wrong key":
        key = X25519PrivateKey.generate()
    elif how == "wrong info":
        info = b"other"
    elif how == "flip":
        sealed = sealed[:40] + bytes([sealed[40] ^ 1]) + sealed[41:]
    elif how == "truncate":
        sealed = sealed[:-1]
    elif how == "empty":
        sealed = b""
    elif how == "zero enc":
        sealed = b"\x00" * 32 + sealed[32:]
    with pytest.raises(IntegrityError):
        hpke.open_base(key, sealed, info)
