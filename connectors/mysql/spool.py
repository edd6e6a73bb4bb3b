"""A transaction's events, in memory while small and in a temporary file beyond.

The binlog tells us a transaction committed only at its XID, after all its rows,
so the rows must be held until then; a bulk load of millions of rows would not
fit in the heap, hence the spill file.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from agent.events import ChangeEvent

SPILL_AFTER = 20_000


class EventSpool:
    def __init__(self, spill_dir: Path | None = None, spill_after: int = SPILL_AFTER) -> None:
        self._events: list[ChangeEvent] = []
        self._file: IO[bytes] | None = None
        self._spill_dir = spill_dir
        self._spill_after = spill_after
        self.count = 0

    def append(self, event: ChangeEvent) -> None:
        self._events.append(event)
        self.count += 1
        if len(self._events) >= self._spill_after:
            if self._file is None:
                self._file = tempfile.TemporaryFile(dir=self._spill_dir, prefix="cv-mysql-tx-")  # noqa: SIM115 - closed after replay
            pickle.dump(self._events, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._events = []

    def __iter__(self) -> Iterator[ChangeEvent]:
        """Yields every event once, then releases the file."""
        if self._file is not None:
            f, self._file = self._file, None
            f.seek(0)
            try:
                while True:
                    try:
                        batch = pickle.load(f)  # noqa: S301 - our own file, written above
                    except EOFError:
                        break
                    yield from batch
            finally:
                f.close()
        events, self._events = self._events, []
        yield from events

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._events = []
        self.count = 0
