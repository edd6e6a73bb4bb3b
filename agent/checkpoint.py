"""What may be confirmed to the source, and where that is remembered.

`AckTracker` is the pghoard rule made explicit: a position is confirmed only
when every enabled sink has made it durable and nothing earlier is still in
flight. Sinks may complete transactions out of order (Kafka delivery
callbacks from several partitions); the tracker keeps the gap-free prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ServiceError, UsageError
from agent.events import Position


@dataclass(frozen=True, slots=True)
class Durable:
    index: int
    position: Position
    commit_ts: datetime | None  # None for a heartbeat


class AckTracker:
    """Lowest gap-free transaction every sink has made durable.

    `register` is called in source order for every transaction and heartbeat;
    `complete(sink, index)` by each sink when a transaction is durable there
    (any order, any thread). Heartbeats need no sink: they become durable as
    soon as everything before them is.

    `on_sink_durable(sink, seconds)` hears, for each transaction as it becomes
    durable in one sink, the seconds from its commit until then: the per-sink
    latency (Kafka acks in milliseconds while the archive waits for its
    segment to close). Called outside the lock, from the completing thread.
    """

    def __init__(
        self,
        sinks: Iterable[str],
        on_sink_durable: Callable[[str, list[float]], None] | None = None,
    ) -> None:
        self._sinks = tuple(sinks)
        self._on_sink_durable = on_sink_durable
        self._lock = threading.Lock()
        # (index, position, commit_ts or None for heartbeats), in source order.
        self._pending: deque[tuple[int, Position, datetime | None]] = deque()
        self._done: dict[str, set[int]] = {s: set() for s in self._sinks}
        self._durable: Durable | None = None
        self._changed = threading.Condition(self._lock)

    def register(self, index: int, position: Position, commit_ts: datetime | None) -> None:
        with self._lock:
            if self._pending and index <= self._pending[-1][0]:
                raise ValueError(f"indexes must increase: {index} after {self._pending[-1][0]}")
            self._pending.append((index, position, commit_ts))
            self._advance()

    def complete(self, sink: str, index: int) -> None:
        commits: list[datetime] = []
        with self._lock:
            done = self._done[sink]
            if index not in done:
                for idx, _pos, ts in self._pending:
                    if idx == index:
                        if ts is not None:
                            commits.append(ts)
                        break
            done.add(index)
            self._advance()
        self._report(sink, commits)

    def complete_through(self, sink: str, index: int) -> None:
        """Every registered transaction up to `index` is durable in `sink`."""
        commits: list[datetime] = []
        with self._lock:
            done = self._done[sink]
            for idx, _pos, ts in self._pending:
                if idx > index:
                    break
                if ts is not None and idx not in done:
                    done.add(idx)
                    commits.append(ts)
            self._advance()
        self._report(sink, commits)

    def _report(self, sink: str, commits: list[datetime]) -> None:
        if self._on_sink_durable is not None and commits:
            now = time.time()
            self._on_sink_durable(sink, [now - ts.timestamp() for ts in commits])

    def _advance(self) -> None:
        moved = False
        while self._pending:
            index, position, ts = self._pending[0]
            if ts is not None and not all(index in self._done[s] for s in self._sinks):
                break
            self._pending.popleft()
            for s in self._sinks:
                self._done[s].discard(index)
            self._durable = Durable(index, position, ts)
            moved = True
        if moved:
            self._changed.notify_all()

    @property
    def durable(self) -> Durable | None:
        with self._lock:
            return self._durable

    def oldest_pending_commit(self) -> datetime | None:
        """Commit time of the oldest transaction not yet durable (for lag)."""
        with self._lock:
            for _idx, _pos, ts in self._pending:
                if ts is not None:
                    return ts
            return None

    def pending(self) -> int:
        with self._lock:
            return sum(1 for _i, _p, ts in self._pending if ts is not None)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every registered transaction is durable; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(ts is not None for _i, _p, ts in self._pending):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True


# ------------------------------------------------------------ durable storage


def position_to_json(position: Position) -> dict[str, Any]:
    return {
        "text": position.text,
        "sort_key": list(position.sort_key),
        "extra": [list(kv) for kv in position.extra],
    }


def position_from_json(doc: dict[str, Any]) -> Position:
    return Position(
        text=str(doc["text"]),
        sort_key=tuple(int(x) for x in doc["sort_key"]),
        extra=tuple((str(k), str(v)) for k, v in doc.get("extra", [])),
    )


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temp file + fsync + rename + directory fsync: the old or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ServiceError(f"cannot write {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    source_id: str  # "<connector>:<database>:<slot or server id>" — refuses a foreign state_dir
    position: Position
    commit_ts: datetime | None
    saved_at: datetime
    snapshot_done: bool = True


class CheckpointStore:
    """`state_dir/checkpoint.json`, replaced atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "checkpoint.json"

    def load(self, source_id: str) -> Checkpoint | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ServiceError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            cp = Checkpoint(
                source_id=str(doc["source_id"]),
                position=position_from_json(doc["position"]),
                commit_ts=datetime.fromisoformat(doc["commit_ts"]) if doc["commit_ts"] else None,
                saved_at=datetime.fromisoformat(doc["saved_at"]),
                snapshot_done=bool(doc.get("snapshot_done", True)),
            )
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{self.path}: not a changevault checkpoint (corrupt?)") from None
        if cp.source_id != source_id:
            raise UsageError(
                f"{self.path}: checkpoint belongs to {cp.source_id}, "
                f"but the configuration captures {source_id}"
            )
        return cp

    def save(self, cp: Checkpoint) -> None:
        doc = {
            "source_id": cp.source_id,
            "position": position_to_json(cp.position),
            "commit_ts": cp.commit_ts.isoformat() if cp.commit_ts else None,
            "saved_at": cp.saved_at.isoformat(),
            "snapshot_done": cp.snapshot_done,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps(doc, indent=1).encode())


def now_utc() -> datetime:
    return datetime.now(UTC)
