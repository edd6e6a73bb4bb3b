"""Backoff with jitter and a deadline; sleep and clock are injectable for tests."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential delays: initial, x factor, capped, with +-jitter fraction.

    `reset()` after a success so the next outage starts from `initial` again.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.3
    rng: random.Random = field(default_factory=random.Random)
    _next: float = 0.0

    def __post_init__(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        base = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return max(0.0, base * (1 + self.rng.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self._next = self.initial


@dataclass
class Deadline:
    seconds: float | None
    clock: Callable[[], float] = time.monotonic
    _start: float = 0.0

    def __post_init__(self) -> None:
        self._start = self.clock()

    def remaining(self) -> float | None:
        if self.seconds is None:
            return None
        return self.seconds - (self.clock() - self._start)

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


def attempts(
    backoff: Backoff,
    deadline: Deadline,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[int]:
    """Yield attempt numbers 1, 2, ... sleeping a backoff delay between them,
    until the deadline would be passed."""
    n = 1
    while True:
        yield n
        delay = backoff.next_delay()
        left = deadline.remaining()
        if left is not None:
            if left <= 0:
                return
            delay = min(delay, left)
        sleep(delay)
        n += 1
