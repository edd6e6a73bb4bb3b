"""Self-contained sealed Kafka message values.

Sealed value (integers big-endian):

    version u8 (=1) | u32 len | data-key announcement (datakeys.py)
    | nonce (12) = 4 zero bytes || u64 message counter | AES-256-GCM ciphertext || tag (16)

The AES key is HKDF-SHA256(data key, info="changevault message key v1"), kept
apart from the per-segment keys stream.py derives from the same data key.
The nonce is the data key's message counter (DataKeyManager.next_message):
unique per key by construction, and the key rotates long before it could wrap.

Associated data (`kafka_aad`): version u8 || u16 len || topic (UTF-8)
|| u32 len || Kafka key || data-key id (16 raw bytes) — CONTRACT.md's
"format version ‖ topic ‖ Kafka key ‖ data-key id", length-prefixed so that
no two (topic, key) pairs share an encoding. A value moved to another topic
or key does not open.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.crypto.datakeys import DataKey, DataKeyManager, DataKeyOpener
from agent.crypto.keyfiles import RecipientPrivateKey, VerifyKey
from agent.errors import IntegrityError

FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_ANNOUNCEMENT_BYTES = 64 * 1024
_MESSAGE_KEY_INFO = b"changevault message key v1"
_U32 = struct.Struct(">I").pack
# 4 zero bytes || u64 counter
_NONCE = struct.Struct(">IQ").pack
# Topics whose AAD prefix a sealer keeps (one per captured table, plus one).
_MAX_CACHED_TOPICS = 4096


def _aad_topic_part(topic: str) -> bytes:
    """version u8 || u16 len || topic: the AAD's part fixed by the topic."""
    t = topic.encode("utf-8")
    return bytes([FORMAT_VERSION]) + struct.pack(">H", len(t)) + t


def kafka_aad(topic: str, key: bytes, key_id: str) -> bytes:
    """The associated data binding a sealed value to its topic, key and data key."""
    return _aad_topic_part(topic) + _U32(len(key)) + key + bytes.fromhex(key_id)


def message_key(data_key: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MESSAGE_KEY_INFO).derive(
        data_key
    )
    return AESGCM(derived)


def _nonce(counter: int) -> bytes:
    return _NONCE(0, counter)


class _KeyParts:
    """What one data key contributes to every value sealed under it."""

    __slots__ = ("aead", "head", "key_id", "raw_id")

    def __init__(self, data_key: DataKey) -> None:
        self.key_id = data_key.key_id
        self.aead = message_key(data_key.secret)
        self.raw_id = bytes.fromhex(data_key.key_id)
        announcement = data_key.announcement
        # version u8 | u32 len | announcement: the sealed value up to its nonce
        self.head = bytes([FORMAT_VERSION]) + _U32(len(announcement)) + announcement


class MessageSealer:
    """Seals one Kafka value at a time under the manager's current data key.

    Per value only the counter, the key's part of the AAD and the encryption
    vary; the rest (cipher, announcement head, the topic's AAD prefix) is
    built once per data key or topic.
    """

    def __init__(self, data_keys: DataKeyManager) -> None:
        self._data_keys = data_keys
        # Replaced as one object so concurrent callers never pair one key's
        # counter with another key's cipher.
        self._parts: _KeyParts | None = None
        self._topic_parts: dict[str, bytes] = {}

    def seal(self, plaintext: bytes, topic: str, key: bytes) -> bytes:
        data_key, counter = self._data_keys.next_message()
        parts = self._parts
        if parts is None or parts.key_id != data_key.key_id:
            parts = _KeyParts(data_key)
            self._parts = parts
        topic_part = self._topic_parts.get(topic)
        if topic_part is None:
            if len(self._topic_parts) >= _MAX_CACHED_TOPICS:
                self._topic_parts.clear()
            topic_part = self._topic_parts[topic] = _aad_topic_part(topic)
        nonce = _NONCE(0, counter)
        aad = b"".join((topic_part, _U32(len(key)), key, parts.raw_id))
        return b"".join((parts.head, nonce, parts.aead.encrypt(nonce, plaintext, aad)))


def peek_data_key_id(sealed: bytes) -> str:
    """The data-key id of a sealed value, for the Kafka header (not verified)."""
    announcement = _split(sealed)[0]
    if len(announcement) < 21:
        raise IntegrityError("Kafka message: announcement truncated")
    return announcement[5:21].hex()


def _split(sealed: bytes) -> tuple[bytes, bytes, bytes]:
    if len(sealed) < 5:
        raise IntegrityError(f"Kafka message: expected at least 5 bytes, found {len(sealed)}")
    if sealed[0] != FORMAT_VERSION:
        raise IntegrityError(
            f"Kafka message: expected format version {FORMAT_VERSION}, found {sealed[0]}"
        )
    (n,) = struct.unpack_from(">I", sealed, 1)
    if n > MAX_ANNOUNCEMENT_BYTES:
        raise IntegrityError(f"Kafka message: announcement length {n} is implausible")
    end = 5 + n
    if len(sealed) < end + NONCE_BYTES + TAG_BYTES:
        raise IntegrityError("Kafka message: truncated")
    return sealed[5:end], sealed[end : end + NONCE_BYTES], sealed[end + NONCE_BYTES :]


class MessageOpener:
    """Opens sealed values: announcement signature first, then unwrap, then the tag."""

    def __init__(
        self,
        private_keys: Sequence[RecipientPrivateKey],
        trusted_signing_keys: Mapping[str, VerifyKey],
    ) -> None:
        self._data_keys = DataKeyOpener(private_keys, trusted_signing_keys)

    def open(self, sealed: bytes, topic: str, key: bytes) -> bytes:
        announcement, nonce, ciphertext = _split(bytes(sealed))
        parsed, data_key = self._data_keys.unwrap(announcement)
        try:
            return message_key(data_key).decrypt(
                nonce, ciphertext, kafka_aad(topic, key, parsed.key_id)
            )
        except InvalidTag:
            raise IntegrityError(
                f"Kafka message on {topic}: authentication tag does not verify "
                "(altered, or moved from another topic or key)"
            ) from None
