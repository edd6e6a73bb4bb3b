"""Data keys: fresh per process, rotated, wrapped to every recipient, announced signed.

A data key is 32 random bytes (AES-256). It lives only in memory: the agent
never stores it unwrapped. Each key is published as a `DataKeyAnnouncement`
that wraps it with RFC 9180 HPKE to every recipient (`archive.pub`) and is
signed with `signing.key`; messages and archive segments carry it, so a reader
with `archive.key` and `signing.pub` needs nothing else.

Announcement bytes (all integers big-endian):

    b"CVDK" | version u8 (=1) | key id (16) | created, µs since epoch UTC, i64
    | u16 len | agent id (UTF-8) | signer key id (8) | recipient count u8 (>=1)
    | per recipient, sorted by key id: recipient key id (8) | u16 len | enc||ct
    | Ed25519 signature (64) over everything before it (context
      "data-key-announcement", see signing.py)

HPKE info for each wrapped key: b"changevault data key v1\\0" || key id, so a
wrapped key cannot be moved under another key id.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from agent.crypto import hpke, signing
from agent.crypto.keyfiles import (
    KEY_ID_BYTES,
    RecipientPrivateKey,
    RecipientPublicKey,
    SigningKey,
    VerifyKey,
    load_recipient_public,
    load_signing_key,
)
from agent.errors import ConfigError, IntegrityError, UsageError
from agent.settings import EncryptionSettings

ANNOUNCEMENT_MAGIC = b"CVDK"
ANNOUNCEMENT_VERSION = 1
ANNOUNCEMENT_CONTEXT = "data-key-announcement"
DATA_KEY_BYTES = 32
DATA_KEY_ID_BYTES = 16
MAX_RECIPIENTS = 255
MAX_AGENT_ID_BYTES = 1024
# AES-GCM with counter nonces: never more than 2**32 messages under one key,
# whatever the settings say (NIST SP 800-38D invocation limit, with margin).
HARD_MAX_MESSAGES = 2**32
_WRAP_INFO = b"changevault data key v1\x00"
_HEAD = struct.Struct(">4sB16sq")


@dataclass(frozen=True)
class DataKeyAnnouncement:
    """What a reader learns about a data key before it may use it."""

    key_id: str  # 32 hex digits
    agent_id: str
    created_us: int
    wrapped: tuple[tuple[str, bytes], ...]  # (recipient key id, HPKE enc||ct), sorted
    signer_key_id: str
    signature: bytes

    def body(self) -> bytes:
        """The canonical bytes the signature covers."""
        agent = self.agent_id.encode("utf-8")
        parts = [
            _HEAD.pack(
                ANNOUNCEMENT_MAGIC,
                ANNOUNCEMENT_VERSION,
                bytes.fromhex(self.key_id),
                self.created_us,
            ),
            struct.pack(">H", len(agent)),
            agent,
            bytes.fromhex(self.signer_key_id),
            bytes([len(self.wrapped)]),
        ]
        for recipient_id, sealed in self.wrapped:
            parts += [bytes.fromhex(recipient_id), struct.pack(">H", len(sealed)), sealed]
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> DataKeyAnnouncement:
        """Parse (not verify); IntegrityError for anything malformed."""
        return _parse(bytes(data))


def _parse(data: bytes) -> DataKeyAnnouncement:
    def fail(what: str) -> IntegrityError:
        return IntegrityError(f"data-key announcement: {what}")

    if len(data) < _HEAD.size:
        raise fail(f"expected at least {_HEAD.size} bytes, found {len(data)}")
    magic, version, key_id, created_us = _HEAD.unpack_from(data, 0)
    if magic != ANNOUNCEMENT_MAGIC:
        raise fail("expected magic CVDK, found other bytes")
    if version != ANNOUNCEMENT_VERSION:
        raise fail(f"expected version {ANNOUNCEMENT_VERSION}, found {version}")
    pos = _HEAD.size

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise fail("truncated")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    (agent_len,) = struct.unpack(">H", take(2))
    if agent_len > MAX_AGENT_ID_BYTES:
        raise fail(f"agent id longer than {MAX_AGENT_ID_BYTES} bytes")
    try:
        agent_id = take(agent_len).decode("utf-8")
    except UnicodeDecodeError:
        raise fail("agent id is not UTF-8") from None
    signer = take(KEY_ID_BYTES).hex()
    count = take(1)[0]
    if count == 0:
        raise fail("expected at least one recipient, found none")
    wrapped: list[tuple[str, bytes]] = []
    for _ in range(count):
        rid = take(KEY_ID_BYTES).hex()
        (n,) = struct.unpack(">H", take(2))
        wrapped.append((rid, take(n)))
    ids = [rid for rid, _ in wrapped]
    if ids != sorted(set(ids)):
        raise fail("recipients not in canonical order or repeated")
    signature = take(signing.SIGNATURE_BYTES)
    if pos != len(data):
        raise fail(f"{len(data) - pos} unexpected trailing bytes")
    return DataKeyAnnouncement(
        key_id=key_id.hex(),
        agent_id=agent_id,
        created_us=created_us,
        wrapped=tuple(wrapped),
        signer_key_id=signer,
        signature=signature,
    )


def _wrap_info(key_id: str) -> bytes:
    return _WRAP_INFO + bytes.fromhex(key_id)


@dataclass(frozen=True)
class DataKey:
    """A data key in use by this process, with its signed announcement."""

    key_id: str
    secret: bytes = field(repr=False)
    created_monotonic: float
    announcement: bytes  # DataKeyAnnouncement.to_bytes()


def new_data_key(
    recipients: Sequence[RecipientPublicKey],
    signing_key: SigningKey,
    agent_id: str,
    *,
    created_us: int,
    created_monotonic: float,
) -> DataKey:
    """Draw a fresh key, wrap it to every recipient, sign the announcement."""
    key_id = secrets.token_bytes(DATA_KEY_ID_BYTES).hex()
    secret = secrets.token_bytes(DATA_KEY_BYTES)
    by_id = {r.key_id: r for r in recipients}
    wrapped = tuple(
        (rid, hpke.seal_base(by_id[rid].key, secret, _wrap_info(key_id))) for rid in sorted(by_id)
    )
    unsigned = DataKeyAnnouncement(
        key_id=key_id,
        agent_id=agent_id,
        created_us=created_us,
        wrapped=wrapped,
        signer_key_id=signing_key.key_id,
        signature=b"",
    )
    signature = signing.sign(signing_key, ANNOUNCEMENT_CONTEXT, unsigned.body())
    return DataKey(
        key_id=key_id,
        secret=secret,
        created_monotonic=created_monotonic,
        announcement=unsigned.body() + signature,
    )


class DataKeyManager:
    """The sender's data keys: one current key, rotated by age and by use.

    Thread-safe: `next_message` hands out (key, counter) pairs under a lock,
    and a counter is never handed out twice for one key, which is what keeps
    AES-GCM nonces unique (messages.py builds the nonce from the counter).
    """

    def __init__(
        self,
        recipients: Sequence[RecipientPublicKey],
        signing_key: SigningKey,
        agent_id: str,
        *,
        max_age: timedelta = timedelta(hours=1),
        max_messages: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not recipients:
            raise UsageError("encryption.recipients: expected at least one archive.pub")
        if len({r.key_id for r in recipients}) > MAX_RECIPIENTS:
            raise UsageError(f"encryption.recipients: at most {MAX_RECIPIENTS} recipients")
        if len(agent_id.encode("utf-8")) > MAX_AGENT_ID_BYTES:
            raise UsageError(f"agent id: expected at most {MAX_AGENT_ID_BYTES} bytes")
        self._recipients = tuple(recipients)
        self._signing_key = signing_key
        self._agent_id = agent_id
        self._max_age = max_age.total_seconds()
        self._max_messages = min(max_messages, HARD_MAX_MESSAGES)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._current = self._draw()
        self._used = 0

    @classmethod
    def from_settings(
        cls,
        encryption: EncryptionSettings,
        agent_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> DataKeyManager:
        """Load `recipients` and `signing_key_file` and apply the rotation limits."""
        if encryption.signing_key_file is None:
            raise ConfigError("encryption.signing_key_file: required key is missing")
        return cls(
            [load_recipient_public(p) for p in encryption.recipients],
            load_signing_key(encryption.signing_key_file),
            agent_id,
            max_age=encryption.data_key_max_age,
            max_messages=encryption.data_key_max_messages,
            clock=clock,
            wall_clock=wall_clock,
        )

    def _draw(self) -> DataKey:
        return new_data_key(
            self._recipients,
            self._signing_key,
            self._agent_id,
            created_us=int(self._wall_clock() * 1_000_000),
            created_monotonic=self._clock(),
        )

    def _rotate_if_due(self) -> None:
        age = self._clock() - self._current.created_monotonic
        if age >= self._max_age or self._used >= self._max_messages:
            self._current = self._draw()
            self._used = 0

    def current(self) -> DataKey:
        """The key to use now (rotated first if it is too old or used up)."""
        with self._lock:
            self._rotate_if_due()
            return self._current

    def next_message(self) -> tuple[DataKey, int]:
        """Reserve the next message counter under the current key."""
        with self._lock:
            self._rotate_if_due()
            counter = self._used
            self._used += 1
            return self._current, counter

    def rotate(self) -> DataKey:
        """Start a new key now (e.g. after adding a recipient)."""
        with self._lock:
            self._current = self._draw()
            self._used = 0
            return self._current


class DataKeyOpener:
    """The reader's side: verify an announcement, then unwrap its key; cache by key id.

    The signature is checked before any unwrapping, so a forged announcement
    (anyone can wrap a key to `archive.pub`) is refused without touching the
    private key. The cache is bounded (least recently used dropped).
    """

    def __init__(
        self,
        private_keys: Sequence[RecipientPrivateKey],
        trusted_signing_keys: Mapping[str, VerifyKey],
        *,
        cache_size: int = 4096,
    ) -> None:
        self._private = {k.key_id: k for k in private_keys}
        self._trusted = dict(trusted_signing_keys)
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[bytes, DataKeyAnnouncement, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def unwrap(self, announcement: bytes) -> tuple[DataKeyAnnouncement, bytes]:
        """(announcement, 32-byte data key); IntegrityError if untrusted or not ours."""
        digest = hashlib.sha256(announcement).digest()
        parsed = DataKeyAnnouncement.from_bytes(announcement)
        with self._lock:
            hit = self._cache.get(parsed.key_id)
            if hit is not None and hit[0] == digest:
                self._cache.move_to_end(parsed.key_id)
                return hit[1], hit[2]
        signing.verify(
            self._trusted,
            parsed.signer_key_id,
            ANNOUNCEMENT_CONTEXT,
            parsed.body(),
            parsed.signature,
        )
        secret = self._unwrap_verified(parsed)
        with self._lock:
            self._cache[parsed.key_id] = (digest, parsed, secret)
            self._cache.move_to_end(parsed.key_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return parsed, secret

    def _unwrap_verified(self, parsed: DataKeyAnnouncement) -> bytes:
        for recipient_id, sealed in parsed.wrapped:
            private = self._private.get(recipient_id)
            if private is None:
                continue
            secret = hpke.open_base(private.key, sealed, _wrap_info(parsed.key_id))
            if len(secret) != DATA_KEY_BYTES:
                raise IntegrityError(
                    f"data key {parsed.key_id}: expected {DATA_KEY_BYTES} bytes, "
                    f"found {len(secret)}"
                )
            return secret
        have = ", ".join(sorted(self._private)) or "none"
        wanted = ", ".join(rid for rid, _ in parsed.wrapped)
        raise IntegrityError(
            f"data key {parsed.key_id}: sealed for recipient key(s) {wanted}, "
            f"but the private key given is {have} (wrong archive.key?)"
        )
