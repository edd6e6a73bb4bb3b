"""Pick an ObjectStore by URL scheme; import a backend's library only when it is used."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.errors import ConfigError
from connectors.base import ObjectStore


def open_object_store(url: str, s3_endpoint_url: str | None = None) -> ObjectStore:
    """`file:///abs/dir` -> LocalObjectStore; `s3://bucket/prefix` -> S3ObjectStore."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"archive.url: expected file:///absolute/path, found {url!r}")
        from connectors.storage.local import LocalObjectStore

        return LocalObjectStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"archive.url: expected s3://bucket/prefix, found {url!r}")
        from connectors.storage.s3 import S3ObjectStore

        return S3ObjectStore(parts.netloc, unquote(parts.path), s3_endpoint_url)
    raise ConfigError(
        f"archive.url: expected a file:// or s3:// URL, found scheme {parts.scheme or 'none'!r}"
    )
