"""Bounded retries for S3 calls: backoff with jitter, an attempt cap and a deadline.

Only transient faults are retried (5xx, throttling, a concurrent conditional
put, connection errors); a refusal (403, 404, 412) is an answer, not a fault.
Longer outages are the archive sink's business: it holds the checkpoint and
calls again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "TooManyRequests",
        "ServiceUnavailable",
        "InternalError",
        # AWS answers 409 while another conditional write to the same key is in flight.
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)


def describe(exc: BaseException) -> str:
    """A failure in a few words: S3's error code and HTTP status, or the exception's type."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{response.get('Error', {}).get('Code', 'error')} (HTTP {status})"
    return type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """True for faults worth another attempt; False for definite answers."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in _THROTTLE_CODES
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0
    deadline: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def run(self, call: Callable[[], T], what: str = "S3 call") -> T:
        """Run `call`, retrying transient faults; re-raise the last one when out of budget.

        Each retry is logged (never silent): an endpoint answering errors now
        and then shows in the log before it shows as a failed sink."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc) or attempt >= self.attempts:
                    raise
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                if time.monotonic() - start + delay > self.deadline:
                    raise
                log.warning("%s: %s, attempt %d of %d; retrying in %.1fs",
                            what, describe(exc), attempt, self.attempts, delay)
                self.sleep(delay)
