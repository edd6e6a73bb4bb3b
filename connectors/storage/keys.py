"""Object keys are the same on every backend: relative, "/"-separated, no tricks.

The file backend turns "/" into subdirectories, so a key that could climb out
of the root ("..", an absolute path) or confuse the OS (NUL) is refused for
every backend alike: an archive must be movable between them.
"""

from __future__ import annotations

from agent.errors import UsageError

MAX_KEY_BYTES = 1024  # S3's limit; also keeps file paths well inside PATH_MAX
# Temp files of the file backend live next to objects under this name prefix.
TEMP_PREFIX = ".cv-tmp-"


def validate_key(key: str) -> str:
    """Return `key` if it is a valid object key, else raise UsageError saying why."""
    if not key:
        raise UsageError("object key: expected a non-empty key, found ''")
    if "\x00" in key:
        raise UsageError(f"object key {key!r}: NUL characters are not allowed")
    if "\\" in key:
        raise UsageError(f"object key {key!r}: backslashes are not allowed, use '/'")
    if key.startswith("/"):
        raise UsageError(f"object key {key!r}: expected a relative key, found an absolute path")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"object key {key!r}: expected valid Unicode text") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise UsageError(f"object key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UsageError(
                f"object key {key!r}: empty, '.' or '..' path components are not allowed"
            )
        if part.startswith(TEMP_PREFIX):
            raise UsageError(f"object key {key!r}: names starting {TEMP_PREFIX!r} are reserved")
    return key
