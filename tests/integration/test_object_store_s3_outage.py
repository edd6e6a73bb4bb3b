"""The S3 backend against an endpoint that is down or hung: one clear ServiceError,
no credentials in it, bounded time; and a put whose answer was lost is settled
by digest on retry. A private moto server, so stopping it disturbs no one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ServiceError
from connectors.storage.s3 import S3ObjectStore, make_s3_client
from connectors.storage.s3_retry import RetryPolicy
from tests.servers.moto import MotoS3

SECRET = "cv-very-secret-value"


@pytest.fixture
def private_s3(server_log_dir: Path) -> Iterator[MotoS3]:
    server = MotoS3(log_dir=server_log_dir, name="moto-outage")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def outage_store(private_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> S3ObjectStore:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cv-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = private_s3.create_bucket(f"cv-{uuid.uuid4().hex[:12]}")
    return S3ObjectStore(
        bucket,
        "p",
        private_s3.endpoint_url,
        client=make_s3_client(private_s3.endpoint_url, timeout=1.0),
        retry=RetryPolicy(attempts=4, base_delay=0.05, deadline=3.0),
    )


def _assert_one_clean_line(err: ServiceError, endpoint: str, bucket: str) -> None:
    message = str(err)
    assert err.exit_code == 3
    assert "\n" not in message
    assert endpoint in message and bucket in message
    assert SECRET not in message and "cv-test-key-id" not in message


def test_stopped_endpoint_is_one_line_service_error(
    private_s3: MotoS3, outage_store: S3ObjectStore
) -> None:
    outage_store.create("before", b"x")
    private_s3.stop()
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        outage_store.create("during", b"y")
    assert time.monotonic() - started < 10  # bounded by the retry deadline
    _assert_one_clean_line(caught.value, private_s3.endpoint_url, outage_store.bucket)
    assert "unreachable" in str(caught.value)
    with pytest.raises(ServiceError):
        outage_store.get("before")


def test_hung_endpoint_then_retry_settles_by_digest(
    private_s3: MotoS3, outage_store: S3ObjectStore
) -> None:
    private_s3.pause()
    try:
        with pytest.raises(ServiceError) as caught:
            outage_store.create("seg/1", b"payload")
    finally:
        private_s3.resume()
    _assert_one_clean_line(caught.value, private_s3.endpoint_url, outage_store.bucket)
    # Whether or not the first put landed while we waited, retrying with the
    # same bytes succeeds, and other bytes are refused.
    time.sleep(0.5)
    outage_store.create("seg/1", b"payload")
    assert outage_store.get("seg/1") == b"payload"
