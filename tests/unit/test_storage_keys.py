"""Object key rules, the URL factory and the S3 retry policy (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError, UsageError
from connectors.storage import open_object_store
from connectors.storage.keys import validate_key
from connectors.storage.local import LocalObjectStore
from connectors.storage.s3_retry import RetryPolicy, is_transient


@pytest.mark.parametrize("key", ["a", "segments/00000001", "leases/main/000000000001", "ü/x"])
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../b",
        "a//b",
        "a/",
        ".",
        "a\x00b",
        "a\\b",
        "\udc80",
        "x/.cv-tmp-abc",
        "k" * 1025,
    ],
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(UsageError):
        validate_key(key)


def test_factory_file(tmp_path: Path) -> None:
    store = open_object_store((tmp_path / "a b").as_uri())
    assert isinstance(store, LocalObjectStore)
    assert store.root == tmp_path / "a b"


@pytest.mark.parametrize("url", ["ftp://x/y", "file://host/x", "s3:///nobucket", "relative/path"])
def test_factory_refuses(url: str) -> None:
    with pytest.raises(ConfigError):
        open_object_store(url)


def test_retry_policy_retries_transient_then_gives_up() -> None:
    from typing import Any

    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "PutObject")

    sleeps: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise EndpointConnectionError(endpoint_url="http://x")
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay=0.01, sleep=sleeps.append)
    assert policy.run(flaky) == "ok" and calls == 3 and len(sleeps) == 2

    refused = client_error("AccessDenied", 403)
    slow = client_error("SlowDown", 503)
    precondition = client_error("PreconditionFailed", 412)
    assert is_transient(slow) and not is_transient(refused) and not is_transient(precondition)

    def always_slow() -> None:
        raise slow

    with pytest.raises(ClientError):
        RetryPolicy(attempts=3, base_delay=0.01, sleep=lambda _: None).run(always_slow)
