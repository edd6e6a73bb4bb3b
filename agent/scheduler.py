"""When to take a base snapshot while `run` streams, and on-demand requests.

A snapshot is due `snapshot_interval` after the newest *complete* snapshot in
the catalog (not after process start), so a restart does not reset the clock.
`changevault snapshot` asks a running agent through a request file in
`state_dir/snapshot-requests/` (the agent holds the archive lease, so the
command cannot write itself); the agent answers with `<id>.done` or
`<id>.failed`. A failed or interrupted snapshot leaves no `snapshot_end` entry
(restore ignores it), is logged and counted, and is retried with backoff; it
never stops streaming.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.checkpoint import write_atomically
from agent.errors import ServiceError
from agent.retry import Backoff
from connectors.storage.lease import ArchiveLease

log = logging.getLogger(__name__)

REQUESTS_DIR = "snapshot-requests"
_REQUEST = ".request"
_DONE = ".done"
_FAILED = ".failed"


# ------------------------------------------------------------- request files


@dataclass(frozen=True, slots=True)
class SnapshotOutcome:
    snapshot_id: str
    position: str
    rows: dict[str, int]
    bytes: int


def requests_dir(state_dir: Path) -> Path:
    return state_dir / REQUESTS_DIR


def request_snapshot(state_dir: Path) -> str:
    """Ask the agent running on this state_dir for a snapshot; returns the request id."""
    directory = requests_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    request_id = uuid.uuid4().hex
    doc = {"request_id": request_id, "requested_at": time.time()}
    write_atomically(directory / f"{request_id}{_REQUEST}", json.dumps(doc).encode())
    return request_id


def pending_requests(state_dir: Path) -> list[str]:
    """Request ids not answered yet, oldest first."""
    directory = requests_dir(state_dir)
    if not directory.is_dir():
        return []
    found = sorted(directory.glob(f"*{_REQUEST}"), key=lambda p: p.stat().st_mtime)
    return [
        p.name[: -len(_REQUEST)]
        for p in found
        if not (directory / (p.name[: -len(_REQUEST)] + _DONE)).exists()
        and not (directory / (p.name[: -len(_REQUEST)] + _FAILED)).exists()
    ]


def answer_request(state_dir: Path, request_id: str, ok: bool, body: dict[str, Any]) -> None:
    suffix = _DONE if ok else _FAILED
    path = requests_dir(state_dir) / f"{request_id}{suffix}"
    write_atomically(path, json.dumps(body).encode())
    (requests_dir(state_dir) / f"{request_id}{_REQUEST}").unlink(missing_ok=True)


def read_answer(state_dir: Path, request_id: str) -> tuple[bool, dict[str, Any]] | None:
    """(ok, body) once the agent answered, else None."""
    for suffix, ok in ((_DONE, True), (_FAILED, False)):
        path = requests_dir(state_dir) / f"{request_id}{suffix}"
        try:
            body: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        return ok, body
    return None


def wait_for_answer(state_dir: Path, request_id: str, lease: ArchiveLease) -> SnapshotOutcome:
    """Wait while the agent holding `lease` (our agent) works on the request."""
    while True:
        answer = read_answer(state_dir, request_id)
        if answer is not None:
            ok, body = answer
            if not ok:
                raise ServiceError(f"the agent's snapshot failed: {body.get('error')}")
            return SnapshotOutcome(
                str(body["snapshot_id"]), str(body["position"]),
                {str(k): int(v) for k, v in body["rows"].items()}, int(body["bytes"]),
            )  # fmt: skip
        holder = lease.current()
        if holder is None or holder.owner_id != lease.owner_id or not holder.live(time.time()):
            raise ServiceError(
                "the agent stopped before answering the snapshot request; "
                "run `changevault snapshot` again"
            )
        time.sleep(1.0)


# ----------------------------------------------------------------- scheduler


class SnapshotScheduler:
    """Background thread: takes a snapshot when due or requested; other periodic chores.

    `take()` writes one complete snapshot (or raises); `ready()` says whether
    the pipeline is streaming so a snapshot can start; `last_complete()` is
    the unix time of the newest complete snapshot (None: none). `chores` run
    every `chore_interval` seconds in the same thread (retention requests).
    """

    def __init__(
        self,
        interval: float,
        state_dir: Path,
        take: Callable[[], SnapshotOutcome],
        ready: Callable[[], bool],
        last_complete: Callable[[], float | None],
        stop: threading.Event,
        *,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
        chores: Callable[[], None] = lambda: None,
        chore_interval: float = 5.0,
        poll: float = 1.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.state_dir = state_dir
        self._take = take
        self._ready = ready
        self._last_complete = last_complete
        self._stop = stop
        self._on_failure = on_failure
        self._chores = chores
        self._chore_interval = chore_interval
        self._poll = poll
        self._backoff = backoff or Backoff(initial=30.0, maximum=1800.0)
        self._clock = clock
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.running = False

    def due(self) -> bool:
        last = self._last_complete()
        return last is None or self._clock() >= last + self.interval

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="snapshot-scheduler", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        next_chore = 0.0
        while not self._stop.wait(self._poll):
            now = time.monotonic()
            if now >= next_chore:
                next_chore = now + self._chore_interval
                try:
                    self._chores()
                except Exception as exc:  # a chore must never end the thread
                    log.warning("background chore failed: %s", exc)
            if not self._ready() or time.monotonic() < self._retry_at:
                continue
            requests = pending_requests(self.state_dir)
            if requests or self.due():
                self._attempt(requests)

    def _attempt(self, requests: list[str]) -> None:
        self.running = True
        try:
            outcome = self._take()
        except Exception as exc:
            self.failures += 1
            delay = self._backoff.next_delay()
            self._retry_at = time.monotonic() + delay
            if not self._stop.is_set():
                log.warning("snapshot failed: %s; retrying in %.0fs", _brief(exc), delay)
            self._on_failure(exc)
            for request_id in requests:
                answer_request(self.state_dir, request_id, False, {"error": _brief(exc)})
            return
        finally:
            self.running = False
        self._backoff.reset()
        for request_id in requests:
            answer_request(
                self.state_dir,
                request_id,
                True,
                {
                    "snapshot_id": outcome.snapshot_id,
                    "position": outcome.position,
                    "rows": outcome.rows,
                    "bytes": outcome.bytes,
                },
            )


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
