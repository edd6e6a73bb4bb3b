"""Fixtures shared by the archive tests: an object store on file:// and on S3
(moto), and one set of keys per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.crypto.keyfiles import generate_key_files
from connectors.base import ObjectStore
from connectors.storage.factory import open_object_store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield open_object_store((tmp_path / "archive").as_uri())
        return
    s3: Any = request.getfixturevalue("s3_server")
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = f"cv-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    yield open_object_store(f"s3://{bucket}/archive", s3.endpoint_url)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_key_files(tmp_path_factory.mktemp("keys"))
