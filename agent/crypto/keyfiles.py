"""Key files: `changevault keys generate` and the loaders every other part uses.

Files written by `keys generate` (see docs/keys.md):

    archive.pub   X25519 public key, PEM SubjectPublicKeyInfo     0644  agent
    archive.key   X25519 private key, PEM PKCS#8 (unencrypted)    0600  restore side only
    signing.key   Ed25519 private key, PEM PKCS#8 (unencrypted)   0600  agent
    signing.pub   Ed25519 public key, PEM SubjectPublicKeyInfo    0644  verify / restore
    keyhash.key   32 random bytes, one line of standard base64     0600  agent

A key id is the first 16 hex digits of SHA-256 over the raw 32-byte public key;
it names a key in announcements, signatures and log lines without revealing it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent.errors import UsageError

ARCHIVE_PUB = "archive.pub"
ARCHIVE_KEY = "archive.key"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
KEYHASH_KEY = "keyhash.key"
KEY_FILES = (ARCHIVE_PUB, ARCHIVE_KEY, SIGNING_KEY, SIGNING_PUB, KEYHASH_KEY)

KEY_ID_HEX_CHARS = 16
KEY_ID_BYTES = KEY_ID_HEX_CHARS // 2
KEYHASH_KEY_BYTES = 32
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM key is < 200 bytes; refuse to slurp anything huge


def key_id_of(raw_public: bytes) -> str:
    """The short stable id of a 32-byte raw public key (16 hex digits)."""
    return hashlib.sha256(raw_public).hexdigest()[:KEY_ID_HEX_CHARS]


def _raw(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class RecipientPublicKey:
    """An `archive.pub`: data keys are wrapped to it with HPKE."""

    key: X25519PublicKey
    key_id: str


@dataclass(frozen=True)
class RecipientPrivateKey:
    """An `archive.key`: unwraps data keys on the restore side only."""

    key: X25519PrivateKey = field(repr=False)
    key_id: str


@dataclass(frozen=True)
class SigningKey:
    """A `signing.key`: signs data-key announcements and catalog entries."""

    key: Ed25519PrivateKey = field(repr=False)
    key_id: str


@dataclass(frozen=True)
class VerifyKey:
    """A `signing.pub` named in `trusted_signing_keys`."""

    key: Ed25519PublicKey
    key_id: str


@dataclass(frozen=True)
class KeyhashKey:
    """The `keyhash.key` secret behind Kafka message keys and segment indexes."""

    secret: bytes = field(repr=False)


# ------------------------------------------------------------------ loading


def _read(path: Path, *, private: bool) -> bytes:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{path}: expected a regular key file")
            mode = stat.S_IMODE(st.st_mode)
            if private and mode & 0o077:
                # Like ssh: a secret others can read is already compromised
                # or about to be; refuse rather than use it.
                raise UsageError(
                    f"{path}: private key file has mode {mode:04o}, expected 0600 "
                    f"(readable by group or others; run chmod 600 {path})"
                )
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read key file: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise UsageError(f"{path}: expected a key file, found more than 64 KiB")
    return data


def load_recipient_public(path: Path) -> RecipientPublicKey:
    data = _read(path, private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: expected a PEM X25519 public key (archive.pub)") from None
    if not isinstance(key, X25519PublicKey):
        raise UsageError(
            f"{path}: expected an X25519 public key (archive.pub), found {type(key).__name__}"
        )
    return RecipientPublicKey(key=key, key_id=key_id_of(_raw(key)))


def load_recipient_private(path: Path) -> RecipientPrivateKey:
    data = _read(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(
            f"{path}: expected an unencrypted PEM X25519 private key (archive.key)"
        ) from None
    if not isinstance(key, X25519PrivateKey):
        raise UsageError(
            f"{path}: expected an X25519 private key (archive.key), found {type(key).__name__}"
        )
    return RecipientPrivateKey(key=key, key_id=key_id_of(_raw(key.public_key())))


def load_signing_key(path: Path) -> SigningKey:
    data = _read(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(
            f"{path}: expected an unencrypted PEM Ed25519 private key (signing.key)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(
            f"{path}: expected an Ed25519 private key (signing.key), found {type(key).__name__}"
        )
    return SigningKey(key=key, key_id=key_id_of(_raw(key.public_key())))


def load_verify_key(path: Path) -> VerifyKey:
    data = _read(path, private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: expected a PEM Ed25519 public key (signing.pub)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(
            f"{path}: expected an Ed25519 public key (signing.pub), found {type(key).__name__}"
        )
    return VerifyKey(key=key, key_id=key_id_of(_raw(key)))


def load_verify_keys(paths: Iterable[Path]) -> dict[str, VerifyKey]:
    """`trusted_signing_keys` as {key id: key}."""
    return {vk.key_id: vk for vk in (load_verify_key(p) for p in paths)}


def load_keyhash_key(path: Path) -> KeyhashKey:
    data = _read(path, private=True)
    try:
        secret = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{path}: expected one line of base64 (keyhash.key)") from None
    if len(secret) != KEYHASH_KEY_BYTES:
        raise UsageError(
            f"{path}: expected {KEYHASH_KEY_BYTES} bytes of key material, found {len(secret)}"
        )
    return KeyhashKey(secret=secret)


# --------------------------------------------------------------- generating


def _write_new(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """Write to a fresh temp file created with its final mode, then rename.

    O_EXCL plus the mode at open() means a private key is never, even for an
    instant, readable by others or half-written under its final name.
    """
    tmp = directory / f".{name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed a public file's mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _key_material() -> dict[str, tuple[bytes, int]]:
    archive = X25519PrivateKey.generate()
    signing = Ed25519PrivateKey.generate()
    pkcs8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)
    spki = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    none = serialization.NoEncryption()
    return {
        ARCHIVE_PUB: (archive.public_key().public_bytes(*spki), _PUBLIC_MODE),
        ARCHIVE_KEY: (archive.private_bytes(*pkcs8, none), _PRIVATE_MODE),
        SIGNING_KEY: (signing.private_bytes(*pkcs8, none), _PRIVATE_MODE),
        SIGNING_PUB: (signing.public_key().public_bytes(*spki), _PUBLIC_MODE),
        KEYHASH_KEY: (
            base64.b64encode(secrets.token_bytes(KEYHASH_KEY_BYTES)) + b"\n",
            _PRIVATE_MODE,
        ),
    }


def generate_key_files(out: Path, *, force: bool = False) -> dict[str, Path]:
    """Write the five key files into `out`; refuse to overwrite without `force`."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: expected a directory for the key files, found a file")
    existing = [out / name for name in KEY_FILES if (out / name).exists()]
    if existing and not force:
        raise UsageError(
            f"{existing[0]}: key file already exists; refusing to overwrite it "
            "(use --force to replace every key file)"
        )
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create key directory: {exc.strerror}") from None
    temps: dict[str, Path] = {}
    try:
        # Write every file under a temp name first, so a failure leaves the
        # previous set (or nothing) rather than a mix of old and new pairs.
        for name, (data, mode) in _key_material().items():
            temps[name] = _write_new(out, name, data, mode)
        final = {}
        for name, tmp in temps.items():
            final[name] = out / name
            os.replace(tmp, final[name])
    except OSError as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise UsageError(f"{out}: cannot write key files: {exc.strerror}") from None
    dir_fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def keys_command(args: argparse.Namespace) -> int:
    """`changevault keys generate --out DIR [--force]`."""
    if args.keys_command != "generate":  # argparse allows only "generate" today
        raise UsageError(f"keys: unknown action {args.keys_command!r}")
    out: Path = args.out
    written = generate_key_files(out, force=bool(args.force))
    recipient = load_recipient_public(written[ARCHIVE_PUB])
    signer = load_verify_key(written[SIGNING_PUB])
    print(f"wrote {out}/: archive.pub archive.key signing.key signing.pub keyhash.key")
    print(f"archive key id {recipient.key_id}; signing key id {signer.key_id}")
    print("give the agent archive.pub, signing.key and keyhash.key; keep archive.key off it")
    return 0
