"""The S3 backend against a stopped endpoint: one clear ServiceError, no credentials."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from agent.errors import ServiceError
from connectors.storage.s3 import S3ObjectStore, make_s3_client
from connectors.storage.s3_retry import RetryPolicy


def test_stopped_endpoint_is_one_line_service_error(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cv-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cv-very-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"cv-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    store = S3ObjectStore(
        bucket,
        "p",
        s3_server.endpoint_url,
        client=make_s3_client(s3_server.endpoint_url, timeout=1.0),
        retry=RetryPolicy(attempts=4, base_delay=0.05, deadline=3.0),
    )
    store.create("before", b"x")
    s3_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ServiceError) as caught:
            store.create("during", b"y")
        elapsed = time.monotonic() - started
    finally:
        s3_server.start()
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "\n" not in message
    assert s3_server.endpoint_url in message and bucket in message
    assert "cv-very-secret-value" not in message and "cv-test" not in message
    assert elapsed < 10  # bounded by the retry deadline
