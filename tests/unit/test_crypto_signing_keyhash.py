"""Signatures for catalog entries, and keyed hashes of row identities."""

from __future__ import annotations

import enum
import hashlib
import hmac
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from agent.crypto import signing
from agent.crypto.keyfiles import (
    KeyhashKey,
    generate_key_files,
    load_keyhash_key,
    load_signing_key,
    load_verify_keys,
)
from agent.crypto.keyhash import KeyHasher, encode_row_key, encode_value
from agent.errors import IntegrityError


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    generate_key_files(tmp_path)
    return tmp_path


def test_sign_verify_and_context_separation(keydir: Path) -> None:
    sk = load_signing_key(keydir / "signing.key")
    trusted = load_verify_keys([keydir / "signing.pub"])
    sig = signing.sign(sk, "catalog-entry", b"payload")
    assert len(sig) == signing.SIGNATURE_BYTES
    signing.verify(trusted, sk.key_id, "catalog-entry", b"payload", sig)
    with pytest.raises(IntegrityError, match="does not verify"):
        signing.verify(trusted, sk.key_id, "catalog-entry", b"payloaD", sig)
    with pytest.raises(IntegrityError, match="does not verify"):
        signing.verify(trusted, sk.key_id, "data-key-announcement", b"payload", sig)
    with pytest.raises(IntegrityError, match="not in trusted_signing_keys"):
        signing.verify({}, sk.key_id, "catalog-entry", b"payload", sig)


def test_envelope_round_trip_and_tampering(keydir: Path) -> None:
    sk = load_signing_key(keydir / "signing.key")
    trusted = load_verify_keys([keydir / "signing.pub"])
    blob = signing.sign_envelope(sk, "catalog-entry", b'{"seq":1}')
    assert signing.open_envelope(trusted, "catalog-entry", blob) == (sk.key_id, b'{"seq":1}')
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            signing.open_envelope(trusted, "catalog-entry", bytes(bad))
    for n in range(len(blob)):
        with pytest.raises(IntegrityError):
            signing.open_envelope(trusted, "catalog-entry", blob[:n])


def test_canonical_json_is_deterministic_and_refuses_floats() -> None:
    assert signing.canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()
    with pytest.raises(TypeError, match="float"):
        signing.canonical_json({"x": 1.5})
    with pytest.raises(TypeError, match="non-finite"):
        signing.canonical_json([float("nan")])


def hasher() -> KeyHasher:
    return KeyHasher(KeyhashKey(bytes(range(32))))


def test_keyhash_is_stable_and_order_independent() -> None:
    h = hasher()
    a = h.row_key("public", "orders", {"id": 42, "region": "eu"})
    b = h.row_key("public", "orders", {"region": "eu", "id": 42})
    assert a == b and len(a) == 32
    # Pinned: the encoding is part of the Kafka contract (a topic's keys never
    # change), so it is spelled out here byte for byte.
    expected = (
        b"changevault-keyhash-v1\x00"
        + b"K\x00\x00\x00\x03row"
        + b"S\x00\x00\x00\x06public"
        + b"S\x00\x00\x00\x06orders"
        + b"\x00\x00\x00\x02"
        + b"S\x00\x00\x00\x02id"
        + b"I\x00\x00\x00\x0242"
        + b"S\x00\x00\x00\x06region"
        + b"S\x00\x00\x00\x02eu"
    )
    assert encode_row_key("public", "orders", {"region": "eu", "id": 42}) == expected
    assert a == hmac.new(bytes(range(32)), expected, hashlib.sha256).digest()
    assert a.hex() == "6de9b8a0fe708c55ee397b9585c384ca7708f27d4e09f4f4a4fc9ee7bf617d69"


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (1, "1"),
        (True, 1),
        (None, ""),
        (b"1", "1"),
        (1, Decimal(1)),
        (1, 1.0),
        (uuid.UUID(int=1), str(uuid.UUID(int=1))),
        (date(2024, 1, 1), "2024-01-01"),
        (datetime(2024, 1, 1, 12), datetime(2024, 1, 1, 12, tzinfo=UTC)),
    ],
)
def test_typed_values_differ(x: object, y: object) -> None:
    h = hasher()
    assert h.row_key("s", "t", {"k": x}) != h.row_key("s", "t", {"k": y})


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (Decimal("1.0"), Decimal("1.00")),
        (Decimal("10"), Decimal("1E+1")),
        (Decimal("0"), Decimal("-0.000")),
        (0.0, -0.0),
        (
            datetime(2024, 1, 1, 12, tzinfo=UTC),
            datetime(2024, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))),
        ),
        (b"ab", bytearray(b"ab")),
    ],
)
def test_equal_database_values_hash_equal(x: object, y: object) -> None:
    h = hasher()
    assert h.row_key("s", "t", {"k": x}) == h.row_key("s", "t", {"k": y})


class _Level(enum.IntEnum):
    HIGH = 7


@pytest.mark.parametrize(
    "key",
    [
        {},
        {"id": 42},
        {"id": -(2**70)},
        {"id": True},
        {"id": _Level.HIGH},
        {"id": "x"},
        {"id": None},
        {"id": Decimal("1.50")},
        {"id": 1.5},
        {"id": b"\x00\xff"},
        {"id": uuid.UUID(int=5)},
        {"id": datetime(2024, 1, 1, 12, tzinfo=UTC)},
        {"id": date(2024, 1, 1)},
        {"region": "eu", "id": 42},
        {"id": 42, "region": "eu"},
        {"é": 1, "z": 2, "a": 3},  # sorted by UTF-8 bytes: a, z, é
    ],
)
def test_row_key_is_the_mac_of_the_canonical_encoding(key: dict[str, object]) -> None:
    """The cached-layout fast path MACs exactly encode_row_key's bytes."""
    h = hasher()
    want = hmac.new(bytes(range(32)), encode_row_key("public", "orders", key), hashlib.sha256)
    for _ in range(2):  # the first call builds the layout, the second reuses it
        assert h.row_key("public", "orders", key) == want.digest()


def test_framing_is_unambiguous() -> None:
    h = hasher()
    assert h.row_key("ab", "c", {"k": 1}) != h.row_key("a", "bc", {"k": 1})
    assert h.row_key("s", "t", {"a": "b", "c": "d"}) != h.row_key("s", "t", {"a": "bc", "": "d"})
    assert h.row_key("s", "t", {"k": 1}) != h.column_value("s", "t", "k", 1)
    assert h.reserved("s", "t", "truncate") != h.row_key("s", "t", {})
    assert encode_value(12) != encode_value(1) + encode_value(2)[1:]


def test_different_keys_give_different_hashes(tmp_path: Path) -> None:
    generate_key_files(tmp_path / "a")
    generate_key_files(tmp_path / "b")
    ha = KeyHasher(load_keyhash_key(tmp_path / "a" / "keyhash.key"))
    hb = KeyHasher(load_keyhash_key(tmp_path / "b" / "keyhash.key"))
    assert ha.row_key("s", "t", {"id": 1}) != hb.row_key("s", "t", {"id": 1})


def test_encoding_reveals_structure_only_and_refuses_unknown_types() -> None:
    enc = encode_row_key("public", "customers", {"id": 7, "t": time(1, 2)})
    assert enc.startswith(b"changevault-keyhash-v1\x00")
    with pytest.raises(TypeError, match="object"):
        encode_value(object())


@pytest.mark.parametrize("length", [1, 32, 63, 64, 65, 200])
def test_mac_is_hmac_sha256_for_any_key_length(length: int) -> None:
    secret = bytes((7 * i + 3) % 256 for i in range(length))
    h = KeyHasher(KeyhashKey(secret))
    for data in (b"", b"x", bytes(range(256)) * 3):
        assert h._mac(data) == hmac.new(secret, data, hashlib.sha256).digest()
    want = hmac.new(secret, encode_row_key("s", "t", {"id": 1}), hashlib.sha256).digest()
    assert h.row_key("s", "t", {"id": 1}) == want
