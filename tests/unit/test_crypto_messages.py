"""Sealed Kafka values: round trips, every tamper case, forgery, nonces, fuzzing."""

from __future__ import annotations

import struct
import threading
from collections import defaultdict

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.crypto.datakeys import DataKeyAnnouncement, DataKeyManager
from agent.crypto.keyfiles import (
    RecipientPrivateKey,
    RecipientPublicKey,
    SigningKey,
    VerifyKey,
    key_id_of,
)
from agent.crypto.messages import (
    FORMAT_VERSION,
    MessageOpener,
    MessageSealer,
    kafka_aad,
    message_key,
    peek_data_key_id,
)
from agent.errors import IntegrityError

TOPIC = "changevault.shop.public.accounts"
KEY = bytes(range(32))


def raw(pub: object) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined]


def recipient() -> tuple[RecipientPublicKey, RecipientPrivateKey]:
    sk = X25519PrivateKey.generate()
    kid = key_id_of(raw(sk.public_key()))
    return RecipientPublicKey(sk.public_key(), kid), RecipientPrivateKey(sk, kid)


def signer() -> tuple[SigningKey, dict[str, VerifyKey]]:
    sk = Ed25519PrivateKey.generate()
    kid = key_id_of(raw(sk.public_key()))
    return SigningKey(sk, kid), {kid: VerifyKey(sk.public_key(), kid)}


class World:
    def __init__(self, max_messages: int = 1_000_000) -> None:
        self.pub, self.priv = recipient()
        self.signing, self.trusted = signer()
        self.keys = DataKeyManager([self.pub], self.signing, "agent-1", max_messages=max_messages)
        self.sealer = MessageSealer(self.keys)
        self.opener = MessageOpener([self.priv], self.trusted)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def split(sealed: bytes) -> tuple[bytes, bytes, bytes]:
    (n,) = struct.unpack_from(">I", sealed, 1)
    return sealed[5 : 5 + n], sealed[5 + n : 17 + n], sealed[17 + n :]


def test_round_trip(world: World) -> None:
    for pt in (b"", b"x", b'{"op":"u"}' * 100):
        sealed = world.sealer.seal(pt, TOPIC, KEY)
        assert sealed[0] == FORMAT_VERSION
        assert world.opener.open(sealed, TOPIC, KEY) == pt


def test_value_reveals_nothing_readable(world: World) -> None:
    pt = b"customer alice@example.com points 100"
    sealed = world.sealer.seal(pt, TOPIC, KEY)
    assert b"alice" not in sealed and b"points" not in sealed


def test_peek_data_key_id_names_the_announced_key(world: World) -> None:
    sealed = world.sealer.seal(b"x", TOPIC, KEY)
    ann = DataKeyAnnouncement.from_bytes(split(sealed)[0])
    assert peek_data_key_id(sealed) == ann.key_id == world.keys.current().key_id


def test_kafka_aad_is_unambiguous() -> None:
    kid = "00" * 16
    assert kafka_aad("ab", b"c", kid) != kafka_aad("a", b"bc", kid)
    assert kafka_aad("t", b"k", kid).startswith(bytes([FORMAT_VERSION]))
    assert kafka_aad("t", b"k", kid).endswith(bytes(16))


def test_sealed_layout_is_the_documented_one_for_every_topic_and_key() -> None:
    """The sealer's cached parts (announcement head, topic prefix) give exactly
    version | u32 len | announcement | nonce | AES-GCM(kafka_aad(...)), for
    several topics and keys and across a key rotation."""
    w = World()
    for rotate in (False, True):
        if rotate:
            w.keys.rotate()
        for topic, key in [(TOPIC, KEY), ("t", b""), ("é" * 300, bytes(7)), (TOPIC, bytes(32))]:
            sealed = w.sealer.seal(b"plaintext", topic, key)
            announcement, nonce, body = split(sealed)
            current = w.keys.current()
            assert announcement == current.announcement
            assert sealed[:5] == bytes([FORMAT_VERSION]) + struct.pack(">I", len(announcement))
            assert nonce[:4] == bytes(4)
            aead = message_key(current.secret)
            assert aead.decrypt(nonce, body, kafka_aad(topic, key, current.key_id)) == b"plaintext"


@pytest.mark.parametrize(
    ("topic", "key"),
    [(TOPIC + "x", KEY), (TOPIC, KEY[:-1]), (TOPIC, bytes(32)), ("other", KEY)],
)
def test_moved_to_another_topic_or_key_does_not_open(world: World, topic: str, key: bytes) -> None:
    sealed = world.sealer.seal(b"payload", TOPIC, KEY)
    with pytest.raises(IntegrityError, match="tag does not verify"):
        world.opener.open(sealed, topic, key)


def test_every_single_bit_flip_is_detected(world: World) -> None:
    sealed = world.sealer.seal(b"a short change event", TOPIC, KEY)
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= bit
            with pytest.raises(IntegrityError):
                world.opener.open(bytes(bad), TOPIC, KEY)


def test_every_truncation_is_detected(world: World) -> None:
    sealed = world.sealer.seal(b"a short change event", TOPIC, KEY)
    for n in range(len(sealed)):
        with pytest.raises(IntegrityError):
            world.opener.open(sealed[:n], TOPIC, KEY)
    with pytest.raises(IntegrityError):
        world.opener.open(sealed + b"\x00", TOPIC, KEY)


def test_wrong_private_key(world: World) -> None:
    sealed = world.sealer.seal(b"x", TOPIC, KEY)
    _, stranger = recipient()
    with pytest.raises(IntegrityError, match="wrong archive.key"):
        MessageOpener([stranger], world.trusted).open(sealed, TOPIC, KEY)


def test_untrusted_signer(world: World) -> None:
    sealed = world.sealer.seal(b"x", TOPIC, KEY)
    _, other_trusted = signer()
    with pytest.raises(IntegrityError, match="not in trusted_signing_keys"):
        MessageOpener([world.priv], other_trusted).open(sealed, TOPIC, KEY)


def test_holder_of_archive_pub_alone_cannot_forge(world: World) -> None:
    # Everything the agent host has except signing.key: archive.pub, and a
    # signing key of the attacker's own. The forged value is well formed and
    # would decrypt, but its announcement is not signed by a trusted key.
    attacker_signing, _ = signer()
    forger = MessageSealer(DataKeyManager([world.pub], attacker_signing, "agent-1"))
    forged = forger.seal(b'{"op":"d"}', TOPIC, KEY)
    with pytest.raises(IntegrityError, match="not in trusted_signing_keys"):
        world.opener.open(forged, TOPIC, KEY)
    # Claiming the trusted key id does not help: the signature fails.
    ann_bytes, nonce, ct = split(forged)
    ann = DataKeyAnnouncement.from_bytes(ann_bytes)
    claimed = DataKeyAnnouncement(
        ann.key_id,
        ann.agent_id,
        ann.created_us,
        ann.wrapped,
        world.signing.key_id,
        ann.signature,
    ).to_bytes()
    relabelled = bytes([FORMAT_VERSION]) + struct.pack(">I", len(claimed)) + claimed + nonce + ct
    with pytest.raises(IntegrityError, match="does not verify"):
        world.opener.open(relabelled, TOPIC, KEY)


def test_legit_announcement_with_foreign_ciphertext_fails_the_tag(world: World) -> None:
    # Reusing a genuine announcement does not give the forger its key.
    genuine_ann, nonce, _ = split(world.sealer.seal(b"x", TOPIC, KEY))
    fake_ct = bytes(40)
    spliced = (
        bytes([FORMAT_VERSION])
        + struct.pack(">I", len(genuine_ann))
        + genuine_ann
        + nonce
        + fake_ct
    )
    with pytest.raises(IntegrityError, match="tag does not verify"):
        world.opener.open(spliced, TOPIC, KEY)


def test_nonces_never_repeat_under_a_key_across_rotations() -> None:
    w = World(max_messages=500)
    nonces: dict[str, set[bytes]] = defaultdict(set)
    total = 0
    for i in range(5000):
        sealed = w.sealer.seal(b"%d" % i, TOPIC, KEY)
        ann, nonce, _ = split(sealed)
        kid = DataKeyAnnouncement.from_bytes(ann).key_id
        assert nonce not in nonces[kid]
        nonces[kid].add(nonce)
        total += 1
    assert len(nonces) == 10 and sum(len(v) for v in nonces.values()) == total
    # the last message still opens after many rotations
    assert w.opener.open(sealed, TOPIC, KEY) == b"4999"


def test_nonces_unique_with_concurrent_sealers() -> None:
    w = World(max_messages=300)
    out: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [w.sealer.seal(b"m", TOPIC, KEY) for _ in range(400)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = set()
    for sealed in out:
        ann, nonce, _ = split(sealed)
        pair = (DataKeyAnnouncement.from_bytes(ann).key_id, nonce)
        assert pair not in seen
        seen.add(pair)
        assert w.opener.open(sealed, TOPIC, KEY) == b"m"


# ------------------------------------------------------------------- fuzzing

FUZZ_WORLD = World()
FUZZ_SEALED = FUZZ_WORLD.sealer.seal(b'{"id":"postgres:shop:0/1:1"}', TOPIC, KEY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        FUZZ_WORLD.opener.open(data, TOPIC, KEY)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(FUZZ_SEALED) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, len(FUZZ_SEALED)),
    st.binary(max_size=20),
)
def test_fuzz_mutated_messages_only_integrity_error(
    flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    bad = bytearray(FUZZ_SEALED)
    for pos, xor in flips:
        bad[pos] ^= xor
    mutated = bytes(bad[:cut]) + tail
    if mutated == FUZZ_SEALED:
        return
    with pytest.raises(IntegrityError):
        FUZZ_WORLD.opener.open(mutated, TOPIC, KEY)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_fuzz_garbage_after_a_valid_header(garbage: bytes, n: int) -> None:
    # a plausible version and length, then noise: still only IntegrityError
    data = bytes([FORMAT_VERSION]) + struct.pack(">I", n) + garbage
    with pytest.raises(IntegrityError):
        FUZZ_WORLD.opener.open(data, TOPIC, KEY)
