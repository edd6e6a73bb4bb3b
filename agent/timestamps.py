"""Times given by people on the command line."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.errors import UsageError


def parse_user_time(value: str, option: str) -> datetime:
    """ISO 8601; without an offset it means UTC (CONTRACT.md)."""
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option}: expected an ISO 8601 time like 2026-11-22T10:15:00Z, found {value!r}"
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
