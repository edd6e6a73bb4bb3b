"""The systemd notify protocol, in a few lines and without a dependency.

Under `Type=notify` systemd passes `$NOTIFY_SOCKET` (a filesystem path, or an
abstract-namespace name written with a leading `@`) and, with `WatchdogSec=`,
`$WATCHDOG_USEC`. Each notification is one datagram of `KEY=VALUE` lines.
Without `$NOTIFY_SOCKET` (run by hand, in a container) every call is a no-op.

The daemon sends READY=1 once its start-up checks pass — not after the initial
snapshot, which can take longer than any start timeout — progress in STATUS=,
WATCHDOG=1 only while `ProgressWatch` says the pipeline makes progress, and
STOPPING=1 on shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if raw.startswith("@"):
            self._address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self._address = raw
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields in one datagram; False if not sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            # systemd going away must never take the agent down with it.
            log.warning("could not notify systemd: %s", exc.strerror or exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"] + ([_status(status)] if status else [])
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def reloading(self) -> bool:
        """Announce a configuration reload (send `ready()` when it is done)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"] + ([_status(status)] if status else [])
        return self.notify(*fields)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")


def _status(text: str) -> str:
    # One datagram field per line: a newline in the text would start a new field.
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    # WATCHDOG_PID names the process the watchdog is meant for; a child that
    # inherited the environment must not feed it.
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(raw)
