"""An ObjectStore wrapper that counts what a restore fetched (objects and bytes).

The report prints it, so an operator (and the tests) can see how little of
the archive an entity restore had to read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from connectors.base import ObjectInfo, ObjectStore


@dataclass
class FetchCount:
    objects: int = 0
    bytes: int = 0


class CountingStore:
    def __init__(self, store: ObjectStore) -> None:
        self.inner = store
        self.url = store.url
        self.count = FetchCount()

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(key, data)

    def create_from_file(self, key: str, path: Path) -> None:
        self.inner.create_from_file(key, path)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self.count.objects += 1
        self.count.bytes += len(data)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        self.count.objects += 1
        self.count.bytes += len(data)
        return data

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
