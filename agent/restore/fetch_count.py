"""An ObjectStore wrapper that counts what a restore fetched, and keeps what it will read twice.

The report prints the counts, so an operator (and the tests) can see how
little of the archive an entity restore had to read. Catalog entries are
counted apart from data objects (segments, indexes, snapshot parts): the
catalog is always read whole, and the archive size the report compares
with counts data objects only.

An entity restore opens a segment twice: once to learn the candidates'
keys, once to replay it in commit order. `keep` makes the first fetch of a
key leave a local copy (a temporary file, not memory) that serves the
second, so each object crosses the network and is counted once; the reader
still checks the copy against the catalog digest.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.archive.catalog import PREFIX as CATALOG_PREFIX
from connectors.base import ObjectInfo, ObjectStore


@dataclass
class FetchCount:
    objects: int = 0
    bytes: int = 0  # data objects: segments, indexes, snapshot parts
    catalog_bytes: int = 0
    catalog_objects: int = 0


class CountingStore:
    def __init__(self, store: ObjectStore) -> None:
        self.inner = store
        self.url = store.url
        self.count = FetchCount()
        self._cache: tempfile.TemporaryDirectory[str] | None = None
        self._kept: set[str] = set()
        self._suffix = ".seg"
        self._lock = threading.Lock()

    def keep(self, suffix: str = ".seg") -> None:
        """From now on, keep a local copy of every fetched object whose key ends so."""
        if self._cache is None:
            self._cache = tempfile.TemporaryDirectory(prefix="changevault-fetch-")
        self._suffix = suffix

    def _local(self, key: str) -> Path:
        assert self._cache is not None
        return Path(self._cache.name) / hashlib.sha256(key.encode()).hexdigest()

    def _counted(self, key: str, data: bytes) -> bytes:
        with self._lock:  # index lookups run on several threads
            self._count(key, data)
        return data

    def _count(self, key: str, data: bytes) -> None:
        if key.startswith(CATALOG_PREFIX):
            self.count.catalog_objects += 1
            self.count.catalog_bytes += len(data)
        else:
            self.count.objects += 1
            self.count.bytes += len(data)

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(key, data)

    def create_from_file(self, key: str, path: Path) -> None:
        self.inner.create_from_file(key, path)

    def get(self, key: str) -> bytes:
        if key in self._kept:
            return self._local(key).read_bytes()
        data = self._counted(key, self.inner.get(key))
        if self._cache is not None and key.endswith(self._suffix):
            self._local(key).write_bytes(data)
            self._kept.add(key)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._counted(key, self.inner.get_range(key, start, length))

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.cleanup()
            self._cache = None
            self._kept.clear()
