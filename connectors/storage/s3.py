"""`s3://bucket/prefix` object store on boto3, create-only by `If-None-Match: *`.

boto3 is imported here only, and this module only when an s3:// store is
opened, so the file backend works without it. botocore's own retries are off:
`RetryPolicy` retries instead, so a put that landed but whose answer was lost
comes back as 412, and a 412 is settled by comparing digests with what is
stored before it is called a conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from agent.errors import ConfigError, ServiceError, UsageError
from agent.settings import redact_url
from connectors.base import ObjectExists, ObjectInfo
from connectors.storage.errors import ObjectMissing
from connectors.storage.keys import validate_key
from connectors.storage.s3_retry import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

_CHUNK = 1024 * 1024
_MAX_SINGLE_PUT = 5 * 1024**3  # S3's limit for one PutObject


def make_s3_client(endpoint_url: str | None, timeout: float = 10.0) -> S3Client:
    """A boto3 S3 client with credentials the usual AWS way and botocore retries off."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "archive.url is s3:// but boto3 is not installed (pip install 'changevault[s3]')"
        ) from None
    config = Config(
        # total_max_attempts: botocore's `max_attempts` counts *retries*, so 1
        # there still meant one silent retry behind RetryPolicy's back.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout * 3,
        # S3-compatible stores (MinIO, Ceph, moto) mostly want path-style URLs.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    client: S3Client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=config
    )
    return client


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3ObjectStore:
    """Objects under `prefix` in `bucket`; never overwrites, deletes only for `expire`."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        *,
        client: S3Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.endpoint = redact_url(endpoint_url) if endpoint_url else "the default AWS endpoint"
        self.retry = retry or RetryPolicy()
        self._client = client or make_s3_client(endpoint_url)

    # ------------------------------------------------------------------ write

    def create(self, key: str, data: bytes) -> None:
        full = self._full(key)
        self._conditional_put(
            key,
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*"
            ),
            hashlib.sha256(data).digest(),
        )

    def create_from_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        try:
            size = path.stat().st_size
            with path.open("rb") as fh:
                want = hashlib.file_digest(fh, "sha256").digest()
        except OSError as exc:
            raise UsageError(f"cannot read {path} to store as {key}: {exc.strerror}") from None
        if size > _MAX_SINGLE_PUT:
            raise UsageError(f"{path}: {size} bytes exceeds the 5 GiB single-put limit")

        def put() -> object:
            # Opened per attempt: a retry must send the body from its start.
            with path.open("rb") as fh:
                return self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=fh, ContentLength=size, IfNoneMatch="*"
                )

        self._conditional_put(key, put, want)

    def _conditional_put(self, key: str, put: Callable[[], object], want: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self.retry.run(put, f"S3 create of {key!r} in bucket {self.bucket}")
        except ClientError as exc:
            if _status(exc) != 412:
                self._fail(exc, "create", key)
            # Taken. If it holds our bytes, an earlier attempt landed: success.
            if self._digest(key) != want:
                raise ObjectExists(f"{self.url}: object {key} already exists") from None
        except Exception as exc:
            self._fail(exc, "create", key)

    def _digest(self, key: str) -> bytes:
        def fetch() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
            digest = hashlib.sha256()
            for chunk in body.iter_chunks(_CHUNK):
                digest.update(chunk)
            return digest.digest()

        return self._call(fetch, "get", key)

    # ------------------------------------------------------------------- read

    def get(self, key: str) -> bytes:
        full = self._full(key)
        return self._call(
            lambda: self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read(),
            "get",
            key,
        )

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise UsageError(f"get_range {key}: expected start, length >= 0")
        full = self._full(key)
        if length == 0:
            if not self.exists(key):
                self._missing(key)
            return b""
        from botocore.exceptions import ClientError

        def fetch() -> bytes:
            try:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
                )
            except ClientError as exc:
                if _status(exc) == 416:  # start at or past the end: like reading past EOF
                    return b""
                raise
            data: bytes = resp["Body"].read()
            return data

        return self._call(fetch, "get", key)

    def exists(self, key: str) -> bool:
        full = self._full(key)
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self._client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
            return True

        return self._call(head, "head", key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in S3's (UTF-8 byte) order."""
        if "\x00" in prefix or prefix.startswith("/"):
            raise UsageError(f"list prefix {prefix!r}: expected a relative key prefix")
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(partial(self._client.list_objects_v2, **kwargs), "list", prefix)
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"][len(self.prefix) :], size=item["Size"])
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    # ----------------------------------------------------------------- delete

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=full), "delete", key)

    # ---------------------------------------------------------------- helpers

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _call(self, call: Callable[[], T], action: str, key: str) -> T:
        try:
            return self.retry.run(call, f"S3 {action} of {key!r} in bucket {self.bucket}")
        except Exception as exc:
            self._fail(exc, action, key)

    def _missing(self, key: str) -> NoReturn:
        raise ObjectMissing(f"{self.url}: object {key} not found")

    def _fail(self, exc: Exception, action: str, key: str) -> NoReturn:
        """Map a botocore failure to one line naming endpoint and bucket, never credentials."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
        )

        if isinstance(exc, ClientError):
            status, code = _status(exc), _code(exc)
            if code != "NoSuchBucket" and (code == "NoSuchKey" or status == 404):
                self._missing(key)
            raise ServiceError(
                f"S3 at {self.endpoint} refused {action} of {key!r} in bucket {self.bucket}: "
                f"{code or 'error'} (HTTP {status})"
            ) from None
        if isinstance(exc, NoCredentialsError):
            raise ConfigError(
                f"S3 bucket {self.bucket}: no AWS credentials found "
                "(environment, shared config/credentials file or instance role)"
            ) from None
        if isinstance(exc, ConnectionError | HTTPClientError):
            raise ServiceError(
                f"S3 endpoint {self.endpoint} unreachable for bucket {self.bucket} "
                f"(retried for up to {self.retry.deadline:g}s): {type(exc).__name__}"
            ) from None
        if isinstance(exc, BotoCoreError):
            raise ServiceError(
                f"S3 {action} of {key!r} in bucket {self.bucket} at {self.endpoint} failed: "
                f"{type(exc).__name__}"
            ) from None
        raise exc
