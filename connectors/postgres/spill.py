"""Per-transaction buffers of raw pgoutput messages that spill to disk.

A transaction is yielded only once its commit has arrived (so a reconnect
never happens half-way through a yielded transaction), which means its
messages must wait somewhere: in memory up to a small budget, then in a file
under the state dir. Protocol 2 streams the chunks of a large transaction
before its commit; each chunk is appended to that transaction's buffer, a
Stream Abort of a subtransaction marks its xid so replay skips exactly its
messages (ROLLBACK TO SAVEPOINT drops only that part), and Stream Commit
replays the whole file. Memory stays bounded whatever the transaction size.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_RECORD = struct.Struct("!II")  # payload length, (sub)transaction id
_DEFAULT_MEMORY_BUDGET = 4 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


class TransactionBuffer:
    """The raw messages of one transaction, in arrival order."""

    def __init__(self, spill_dir: Path, xid: int, memory_budget: int = _DEFAULT_MEMORY_BUDGET):
        self.xid = xid
        self._dir = spill_dir
        self._budget = memory_budget
        # In memory: payloads and their (sub)transaction ids as two parallel lists,
        # so a message costs two appends and replay can hand out the list itself.
        self._payloads: list[bytes] = []
        self._subxids: list[int] = []
        self._memory_bytes = 0
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._aborted: set[int] = set()

    @property
    def spilled(self) -> bool:
        return self._file is not None

    @property
    def path(self) -> Path | None:
        return self._path

    def append(self, payload: bytes, subxid: int = 0) -> None:
        if self._file is None:
            self._payloads.append(payload)
            self._subxids.append(subxid)
            self._memory_bytes += len(payload) + 64  # rough per-item overhead
            if self._memory_bytes > self._budget:
                self._spill()
            return
        self._file.write(_RECORD.pack(len(payload), subxid))
        self._file.write(payload)

    def _spill(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=f"xid-{self.xid}-", suffix=".spill", dir=self._dir)
        self._path = Path(name)
        self._file = os.fdopen(fd, "w+b", buffering=_READ_CHUNK)
        for subxid, payload in zip(self._subxids, self._payloads, strict=True):
            self._file.write(_RECORD.pack(len(payload), subxid))
            self._file.write(payload)
        self._payloads, self._subxids = [], []
        self._memory_bytes = 0

    def abort_subtransaction(self, subxid: int) -> None:
        """Replay will skip every message of `subxid` (a ROLLBACK TO SAVEPOINT)."""
        self._aborted.add(subxid)
        if self._file is None:
            kept = [
                (s, p) for s, p in zip(self._subxids, self._payloads, strict=True) if s != subxid
            ]
            self._subxids = [s for s, _p in kept]
            self._payloads = [p for _s, p in kept]
            self._memory_bytes = sum(len(p) + 64 for p in self._payloads)

    def replay(self) -> Iterator[bytes]:
        """Every message not aborted, in order; the buffer is discarded as it is read."""
        if self._file is None:
            payloads, subxids, aborted = self._payloads, self._subxids, self._aborted
            self.discard()
            if aborted:  # removed from memory at the abort; this covers any sent later
                payloads = [p for s, p in zip(subxids, payloads, strict=True) if s not in aborted]
            return iter(payloads)
        return self._replay_file()

    def _replay_file(self) -> Iterator[bytes]:
        assert self._file is not None
        try:
            self._file.flush()
            self._file.seek(0)
            read = self._file.read
            while header := read(_RECORD.size):
                length, subxid = _RECORD.unpack(header)
                payload = read(length)
                if len(payload) != length:
                    raise OSError(f"spill file {self._path} is truncated")
                if subxid not in self._aborted:
                    yield payload
        finally:
            self.discard()

    def discard(self) -> None:
        self._payloads, self._subxids = [], []
        self._memory_bytes = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


def clear_spill_dir(spill_dir: Path) -> None:
    """Spill files left by a crash are useless: their transactions are re-sent."""
    if spill_dir.is_dir():
        for leftover in spill_dir.glob("xid-*.spill"):
            leftover.unlink(missing_ok=True)
