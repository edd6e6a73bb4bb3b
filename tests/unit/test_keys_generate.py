"""`changevault keys generate` and the key-file loaders."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.cli import main
from agent.crypto.keyfiles import (
    KEY_FILES,
    generate_key_files,
    key_id_of,
    load_keyhash_key,
    load_recipient_private,
    load_recipient_public,
    load_signing_key,
    load_verify_key,
    load_verify_keys,
)
from agent.errors import UsageError

PRIVATE = ("archive.key", "signing.key", "keyhash.key")
PUBLIC = ("archive.pub", "signing.pub")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_writes_five_files_with_their_modes(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    generate_key_files(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(KEY_FILES)  # no temp files left
    assert mode_of(out) == 0o700
    for name in PRIVATE:
        assert mode_of(out / name) == 0o600, name
    for name in PUBLIC:
        assert mode_of(out / name) == 0o644, name


def test_modes_hold_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        generate_key_files(tmp_path / "k")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k" / "archive.key") == 0o600
    assert mode_of(tmp_path / "k" / "archive.pub") == 0o644


def test_generated_files_load_and_pair_up(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    pub = load_recipient_public(tmp_path / "archive.pub")
    priv = load_recipient_private(tmp_path / "archive.key")
    assert pub.key_id == priv.key_id and len(pub.key_id) == 16
    signer = load_signing_key(tmp_path / "signing.key")
    verifier = load_verify_key(tmp_path / "signing.pub")
    assert signer.key_id == verifier.key_id
    verifier.key.verify(signer.key.sign(b"m"), b"m")
    assert len(load_keyhash_key(tmp_path / "keyhash.key").secret) == 32
    assert load_verify_keys([tmp_path / "signing.pub"]) == {verifier.key_id: verifier}


def test_file_formats(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    assert (tmp_path / "archive.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert (tmp_path / "archive.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    line = (tmp_path / "keyhash.key").read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    assert len(base64.b64decode(line.strip(), validate=True)) == 32


def test_key_id_is_sha256_prefix_of_raw_public_key(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    pub = load_recipient_public(tmp_path / "archive.pub")
    raw = pub.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert pub.key_id == key_id_of(raw)
    import hashlib

    assert pub.key_id == hashlib.sha256(raw).hexdigest()[:16]


def test_every_generation_draws_new_keys(tmp_path: Path) -> None:
    generate_key_files(tmp_path / "a")
    generate_key_files(tmp_path / "b")
    for name in KEY_FILES:
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()


def test_overwrite_refused_without_force(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in KEY_FILES}
    with pytest.raises(UsageError, match="archive.pub.*already exists.*--force"):
        generate_key_files(tmp_path)
    assert before == {n: (tmp_path / n).read_bytes() for n in KEY_FILES}


def test_one_existing_file_is_enough_to_refuse(tmp_path: Path) -> None:
    (tmp_path / "keyhash.key").write_text("keep me\n")
    with pytest.raises(UsageError, match="keyhash.key"):
        generate_key_files(tmp_path)
    assert (tmp_path / "keyhash.key").read_text() == "keep me\n"
    assert not (tmp_path / "archive.pub").exists()


def test_overwrite_allowed_with_force(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    old = load_recipient_public(tmp_path / "archive.pub").key_id
    generate_key_files(tmp_path, force=True)
    assert load_recipient_public(tmp_path / "archive.pub").key_id != old
    assert mode_of(tmp_path / "archive.key") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(KEY_FILES)


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="expected a directory"):
        generate_key_files(tmp_path / "f")


@pytest.mark.parametrize("name", PRIVATE)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_private_key_readable_by_others_is_refused(tmp_path: Path, name: str, mode: int) -> None:
    generate_key_files(tmp_path)
    os.chmod(tmp_path / name, mode)
    loader = {
        "archive.key": load_recipient_private,
        "signing.key": load_signing_key,
        "keyhash.key": load_keyhash_key,
    }[name]
    with pytest.raises(UsageError) as err:
        loader(tmp_path / name)
    msg = str(err.value)
    assert name in msg and f"{mode:04o}" in msg and "\n" not in msg


def test_public_key_may_be_world_readable(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    assert mode_of(tmp_path / "archive.pub") == 0o644
    load_recipient_public(tmp_path / "archive.pub")


def test_wrong_key_types_are_refused_naming_the_file(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    with pytest.raises(UsageError, match=r"signing.pub: expected an X25519 public key"):
        load_recipient_public(tmp_path / "signing.pub")
    with pytest.raises(UsageError, match=r"archive.pub: expected an Ed25519 public key"):
        load_verify_key(tmp_path / "archive.pub")
    with pytest.raises(UsageError, match=r"signing.key: expected an X25519 private key"):
        load_recipient_private(tmp_path / "signing.key")
    with pytest.raises(UsageError, match=r"archive.key: expected an Ed25519 private key"):
        load_signing_key(tmp_path / "archive.key")


def test_bad_pem_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(UsageError, match="bad.pub: expected a PEM X25519"):
        load_recipient_public(bad)
    with pytest.raises(UsageError, match="missing.key: cannot read key file"):
        load_signing_key(tmp_path / "missing.key")
    hk = tmp_path / "short.key"
    fd = os.open(hk, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, base64.b64encode(b"x" * 16) + b"\n")
    os.close(fd)
    with pytest.raises(UsageError, match="short.key: expected 32 bytes"):
        load_keyhash_key(hk)
    os.chmod(hk, 0o600)
    hk.write_text("!!! not base64\n")
    with pytest.raises(UsageError, match="short.key: expected one line of base64"):
        load_keyhash_key(hk)


def test_encrypted_pkcs8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    pem = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, pem)
    os.close(fd)
    with pytest.raises(UsageError, match="enc.key: expected an unencrypted PEM"):
        load_recipient_private(path)


def test_loaded_private_keys_do_not_print_secrets(tmp_path: Path) -> None:
    generate_key_files(tmp_path)
    hk = load_keyhash_key(tmp_path / "keyhash.key")
    assert base64.b64encode(hk.secret).decode() not in repr(hk)
    assert repr(hk) == "KeyhashKey()"
    sk = load_signing_key(tmp_path / "signing.key")
    raw = sk.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw.hex() not in repr(sk)
    assert isinstance(sk.key, Ed25519PrivateKey)


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "keys"
    assert main(["keys", "generate", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "archive key id" in printed.out
    for name in PRIVATE:
        assert mode_of(out / name) == 0o600
    secret = (out / "keyhash.key").read_text().strip()
    assert secret not in printed.out + printed.err

    assert main(["keys", "generate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "archive.pub" in err and "--force" in err

    assert main(["keys", "generate", "--out", str(out), "--force"]) == 0
    assert (out / "keyhash.key").read_text().strip() != secret


def test_cli_reports_unwritable_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        # root ignores directory modes; use a path under a regular file instead
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "keys"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "keys"
    assert main(["keys", "generate", "--out", str(target)]) == 2
    assert "cannot create key directory" in capsys.readouterr().err
