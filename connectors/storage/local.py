"""`file://` object store: create-only files made durable before they become visible.

A create writes a temp file beside the target, fsyncs it, then `link(2)`s it to
the final name. link refuses an existing name atomically (unlike rename, which
would overwrite), so of two concurrent creators exactly one wins and readers
see a whole object or nothing. The directory is fsynced afterwards so the new
name survives a power cut.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from agent.errors import ServiceError, UsageError
from connectors.base import ObjectExists, ObjectInfo
from connectors.storage.errors import ObjectMissing
from connectors.storage.keys import TEMP_PREFIX, validate_key

_CHUNK = 1024 * 1024
_OBJECT_MODE = 0o644
_DIR_MODE = 0o755


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


class LocalObjectStore:
    """Objects as files under `root`; "/" in a key becomes a subdirectory."""

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise UsageError(f"archive.url: expected an absolute directory, found {root}")
        self.root = root
        self.url = root.as_uri()

    # ------------------------------------------------------------------ write

    def create(self, key: str, data: bytes) -> None:
        def write(fh: BinaryIO) -> bytes:
            fh.write(data)
            return hashlib.sha256(data).digest()

        self._create(key, write)

    def create_from_file(self, key: str, path: Path) -> None:
        def write(fh: BinaryIO) -> bytes:
            digest = hashlib.sha256()
            with path.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    fh.write(chunk)
            return digest.digest()

        self._create(key, write)

    def _create(self, key: str, write: Callable[[BinaryIO], bytes]) -> None:
        """`write` fills the temp file and returns the SHA-256 of what it wrote."""
        target = self._path(key)
        try:
            self._make_dirs(target.parent)
            tmp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            try:
                # 0644 / 0755 whatever the umask: sealed objects may be read by
                # a backup group, never written by anyone but the agent.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _OBJECT_MODE)
                with os.fdopen(fd, "wb") as fh:
                    want = write(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    # A retry of a create that already landed is a success;
                    # anything else under this key is someone else's object.
                    if _file_digest(target) != want:
                        raise ObjectExists(f"{self.url}: object {key} already exists") from None
                    return
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise ServiceError(
                f"{self.url}: cannot create object {key}: {exc.strerror or exc}"
            ) from None

    def _make_dirs(self, directory: Path) -> None:
        """mkdir -p, fsyncing each parent whose entries changed."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            missing.append(probe)
            if probe == self.root:
                break
            probe = probe.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                continue  # a concurrent creator made it
            if d != self.root:
                _fsync_dir(d.parent)

    # ------------------------------------------------------------------- read

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}: object {key} not found") from None
        except OSError as exc:
            raise ServiceError(f"{self.url}: cannot read {key}: {exc.strerror}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise UsageError(f"get_range {key}: expected start, length >= 0")
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}: object {key} not found") from None
        except OSError as exc:
            raise ServiceError(f"{self.url}: cannot read {key}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a string prefix, as in S3), sorted."""
        if "\x00" in prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise UsageError(f"list prefix {prefix!r}: expected a relative key prefix")
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / head if head else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            # Prune directories that cannot hold a match.
            dirnames[:] = [
                d
                for d in dirnames
                if (rel_dir + d + "/").startswith(prefix) or prefix.startswith(rel_dir + d + "/")
            ]
            for name in filenames:
                key = rel_dir + name
                if name.startswith(TEMP_PREFIX) or not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue  # deleted by expire meanwhile
                found.append(ObjectInfo(key=key, size=size))
        # S3 lists in UTF-8 byte order; match it so backends are interchangeable.
        found.sort(key=lambda info: info.key.encode("utf-8"))
        yield from found

    # ----------------------------------------------------------------- delete

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ServiceError(f"{self.url}: cannot delete {key}: {exc.strerror}") from None
        _fsync_dir(path.parent)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)
