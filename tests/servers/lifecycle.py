"""What every test server shares: a context manager, `running`, and a start
that picks a new port when another process won the race for the free one."""

from __future__ import annotations

import abc
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.servers.processes import ServerStartError, free_port, log_mentions

START_ATTEMPTS = 3


class ServerProcess(abc.ABC):
    port: int
    log_path: Path
    _process: subprocess.Popen[bytes] | None
    _log: IO[bytes] | None
    _started_once: bool
    # What the server logs when its port was taken between free_port() and bind().
    bind_error = "Address already in use"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Stop and throw away what the server kept."""

    @abc.abstractmethod
    def _start_once(self) -> None: ...

    def _port_changed(self) -> None:
        """Hook: the port was changed before a retry."""

    def _start_on_free_port(self) -> None:
        for attempt in range(START_ATTEMPTS):
            try:
                self._start_once()
                return
            except ServerStartError:
                # Retry on a new port, but never after clients have seen this one.
                lost_race = log_mentions(self.log_path, self.bind_error)
                if not lost_race or attempt == START_ATTEMPTS - 1 or self._started_once:
                    raise
                self.port = free_port()
                self._port_changed()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
