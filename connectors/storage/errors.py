"""Storage errors that `connectors.base` does not define (yet)."""

from __future__ import annotations

from agent.errors import IntegrityError


class ObjectMissing(IntegrityError):
    """A key that should be in the store is not (exit 4: the archive lost an object)."""
