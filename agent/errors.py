"""One error hierarchy; each class carries the exit code of CONTRACT.md.

The CLI prints `str(error)` as one line on stderr and exits with `exit_code`.
Messages say what was expected and what was found, and never contain secrets.
"""

from __future__ import annotations


class ChangevaultError(Exception):
    """Base of every error the CLI maps to an exit code (1: unexpected)."""

    exit_code = 1


class UsageError(ChangevaultError):
    """Bad usage, configuration or input (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file or an override is invalid (exit 2)."""


class NotYetAvailable(UsageError):
    """A subcommand whose feature has not landed yet (exit 2, says so plainly)."""


class ServiceError(ChangevaultError):
    """A required service is unreachable or refused us (exit 3)."""

    exit_code = 3


class RefusedError(ServiceError):
    """The service refused our credentials or privileges (exit 3); retrying
    with the same configuration cannot help, so the daemon stops."""


class UncapturableChange(ServiceError):
    """A committed change the agent cannot carry faithfully (exit 3): DML a
    MySQL session logged in statement format, a json number beyond the double
    range. Retrying cannot help, so `run` stops instead of reconnecting."""


class PositionLostError(ServiceError):
    """The source no longer has the position we need: slot lost, binlog purged (exit 3)."""


class IntegrityError(ChangevaultError):
    """The archive or a message is tampered, truncated, missing, out of chain,
    or sealed for another key (exit 4)."""

    exit_code = 4


class DecodeError(IntegrityError):
    """Bytes from a log or archive could not be decoded (exit 4)."""
