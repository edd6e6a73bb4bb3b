"""Data keys: rotation, announcements, signature-before-unwrap, caching."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.crypto import datakeys
from agent.crypto.datakeys import (
    DataKeyAnnouncement,
    DataKeyManager,
    DataKeyOpener,
    new_data_key,
)
from agent.crypto.keyfiles import (
    RecipientPrivateKey,
    RecipientPublicKey,
    SigningKey,
    VerifyKey,
    generate_key_files,
    key_id_of,
    load_recipient_private,
    load_verify_keys,
)
from agent.errors import ConfigError, IntegrityError, UsageError
from agent.settings import EncryptionSettings


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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(**kw: object) -> tuple[DataKeyManager, RecipientPrivateKey, dict[str, VerifyKey]]:
    pub, priv = recipient()
    sk, trusted = signer()
    return DataKeyManager([pub], sk, "agent-1", **kw), priv, trusted  # type: ignore[arg-type]


def test_rotation_by_count() -> None:
    m, _, _ = manager(max_messages=3)
    seen = [m.next_message() for _ in range(7)]
    assert [c for _, c in seen] == [0, 1, 2, 0, 1, 2, 0]
    ids = [k.key_id for k, _ in seen]
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5] != ids[6]
    assert len(set(ids)) == 3


def test_rotation_by_age_with_injected_clock() -> None:
    clock = FakeClock()
    m, _, _ = manager(max_age=timedelta(hours=1), clock=clock)
    first = m.current()
    clock.now += 3599
    assert m.current().key_id == first.key_id
    clock.now += 1
    second = m.current()
    assert second.key_id != first.key_id
    _, counter = m.next_message()
    assert counter == 0  # the counter restarts with the new key


def test_hard_cap_on_messages_per_key() -> None:
    m, _, _ = manager(max_messages=10**12)
    assert m._max_messages == datakeys.HARD_MAX_MESSAGES


def test_explicit_rotate() -> None:
    m, _, _ = manager()
    a = m.current()
    m.next_message()
    b = m.rotate()
    assert a.key_id != b.key_id and m.next_message() == (b, 0)


def test_two_managers_never_share_a_key_id() -> None:
    ids = set()
    for _ in range(50):
        m, _, _ = manager(max_messages=1)
        for _ in range(4):
            ids.add(m.next_message()[0].key_id)
    assert len(ids) == 200
    assert all(len(i) == 32 for i in ids)


def test_announcement_round_trips_canonically() -> None:
    m, _, trusted = manager()
    key = m.current()
    ann = DataKeyAnnouncement.from_bytes(key.announcement)
    assert ann.to_bytes() == key.announcement
    assert ann.key_id == key.key_id and ann.agent_id == "agent-1"
    assert ann.signer_key_id in trusted
    assert key.secret not in key.announcement  # never stored unwrapped
    assert key.secret.hex() not in repr(key)


def test_opener_unwraps_only_after_verifying() -> None:
    m, priv, trusted = manager()
    key = m.current()
    opener = DataKeyOpener([priv], trusted)
    ann, secret = opener.unwrap(key.announcement)
    assert secret == key.secret and ann.key_id == key.key_id

    _, other_trusted = signer()
    with pytest.raises(IntegrityError, match="not in trusted_signing_keys"):
        DataKeyOpener([priv], other_trusted).unwrap(key.announcement)


def test_forged_announcement_from_archive_pub_alone_is_refused() -> None:
    # The attacker has archive.pub (the agent host's copy) and their own
    # signing key, and announces a key of their choosing.
    pub, priv = recipient()
    real_signer, trusted = signer()
    attacker_signer, _ = signer()
    forged = new_data_key([pub], attacker_signer, "agent-1", created_us=0, created_monotonic=0.0)
    with pytest.raises(IntegrityError, match="not in trusted_signing_keys"):
        DataKeyOpener([priv], trusted).unwrap(forged.announcement)
    # ... or claims the real signer's key id: the signature does not verify.
    ann = DataKeyAnnouncement.from_bytes(forged.announcement)
    relabelled = DataKeyAnnouncement(
        ann.key_id, ann.agent_id, ann.created_us, ann.wrapped, real_signer.key_id, ann.signature
    )
    with pytest.raises(IntegrityError, match="does not verify"):
        DataKeyOpener([priv], trusted).unwrap(relabelled.to_bytes())


def test_swapped_wrapped_key_breaks_the_signature() -> None:
    pub, priv = recipient()
    sk, trusted = signer()
    good = DataKeyAnnouncement.from_bytes(
        new_data_key([pub], sk, "a", created_us=1, created_monotonic=0).announcement
    )
    other = DataKeyAnnouncement.from_bytes(
        new_data_key([pub], signer()[0], "a", created_us=1, created_monotonic=0).announcement
    )
    spliced = DataKeyAnnouncement(
        good.key_id,
        good.agent_id,
        good.created_us,
        other.wrapped,
        good.signer_key_id,
        good.signature,
    )
    with pytest.raises(IntegrityError, match="does not verify"):
        DataKeyOpener([priv], trusted).unwrap(spliced.to_bytes())


def test_wrong_private_key_names_both_key_ids() -> None:
    m, _, trusted = manager()
    _, stranger = recipient()
    with pytest.raises(IntegrityError, match=f"private key given is {stranger.key_id}"):
        DataKeyOpener([stranger], trusted).unwrap(m.current().announcement)


def test_several_recipients_each_can_unwrap() -> None:
    pairs = [recipient() for _ in range(3)]
    sk, trusted = signer()
    m = DataKeyManager([p for p, _ in pairs], sk, "agent-x")
    key = m.current()
    assert len(DataKeyAnnouncement.from_bytes(key.announcement).wrapped) == 3
    for _, priv in pairs:
        assert DataKeyOpener([priv], trusted).unwrap(key.announcement)[1] == key.secret


def test_cache_skips_the_work_for_a_known_announcement() -> None:
    m, priv, trusted = manager()

    class Counting(DataKeyOpener):
        calls = 0

        def _unwrap_verified(self, parsed: DataKeyAnnouncement) -> bytes:
            Counting.calls += 1
            return super()._unwrap_verified(parsed)

    opener = Counting([priv], trusted, cache_size=2)
    a = m.current().announcement
    for _ in range(5):
        opener.unwrap(a)
    assert Counting.calls == 1
    b, c = m.rotate().announcement, m.rotate().announcement
    opener.unwrap(b)
    opener.unwrap(c)  # evicts a
    opener.unwrap(a)
    assert Counting.calls == 4


def test_cache_does_not_accept_other_bytes_under_a_known_key_id() -> None:
    m, priv, trusted = manager()
    opener = DataKeyOpener([priv], trusted)
    good = m.current().announcement
    opener.unwrap(good)
    ann = DataKeyAnnouncement.from_bytes(good)
    changed = DataKeyAnnouncement(
        ann.key_id, "someone-else", ann.created_us, ann.wrapped, ann.signer_key_id, ann.signature
    )
    with pytest.raises(IntegrityError, match="does not verify"):
        opener.unwrap(changed.to_bytes())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:4] + b"\x02" + b[5:],
        lambda b: b"",
        lambda b: b[:30],
    ],
)
def test_malformed_announcements(mutate: object) -> None:
    m, priv, trusted = manager()
    bad = mutate(m.current().announcement)  # type: ignore[operator]
    with pytest.raises(IntegrityError, match="announcement"):
        DataKeyOpener([priv], trusted).unwrap(bad)


def test_manager_refuses_no_recipients() -> None:
    sk, _ = signer()
    with pytest.raises(UsageError, match="recipients"):
        DataKeyManager([], sk, "a")


def test_from_settings_loads_keys_and_limits(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    enc = EncryptionSettings(
        recipients=[tmp_path / "archive.pub"],
        signing_key_file=tmp_path / "signing.key",
        data_key_max_messages=2,
        data_key_max_age=timedelta(minutes=5),
    )
    clock = FakeClock()
    m = DataKeyManager.from_settings(enc, "agent-9", clock=clock)
    first = m.next_message()[0]
    m.next_message()
    assert m.next_message()[0].key_id != first.key_id  # count limit applied
    before = m.current().key_id
    clock.now += 300
    assert m.current().key_id != before  # age limit applied
    opener = DataKeyOpener(
        [load_recipient_private(tmp_path / "archive.key")],
        load_verify_keys([tmp_path / "signing.pub"]),
    )
    assert opener.unwrap(m.current().announcement)[0].agent_id == "agent-9"
    with pytest.raises(ConfigError, match="signing_key_file"):
        DataKeyManager.from_settings(enc.model_copy(update={"signing_key_file": None}), "a")
