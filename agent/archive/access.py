"""Opening an archive and its keys from settings, for the commands that read it."""

from __future__ import annotations

from pathlib import Path

from agent.crypto.datakeys import DataKeyOpener
from agent.crypto.keyfiles import (
    SigningKey,
    VerifyKey,
    key_id_of,
    load_recipient_private,
    load_verify_keys,
)
from agent.errors import UsageError
from agent.settings import Settings
from connectors.base import ObjectStore
from connectors.storage.factory import open_object_store


def open_store(settings: Settings) -> ObjectStore:
    return open_object_store(settings.archive.url, settings.archive.s3_endpoint_url)


def verify_key_of(signer: SigningKey) -> VerifyKey:
    from cryptography.hazmat.primitives import serialization

    pub = signer.key.public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return VerifyKey(pub, key_id_of(raw))


def trusted_keys(settings: Settings) -> dict[str, VerifyKey]:
    paths = settings.encryption.trusted_signing_keys
    if not paths:
        raise UsageError(
            f"{settings.origin}: encryption.trusted_signing_keys: expected at least one "
            "signing.pub to check the archive against"
        )
    return load_verify_keys(paths)


def data_key_opener(settings: Settings, private_key: Path | None) -> DataKeyOpener:
    path = private_key or settings.encryption.private_key_file
    if path is None:
        raise UsageError(
            f"{settings.origin}: reading the archive needs --private-key FILE "
            "or encryption.private_key_file (archive.key)"
        )
    return DataKeyOpener([load_recipient_private(path)], trusted_keys(settings))
