from __future__ import annotations

import random

from agent.retry import Backoff, Deadline, attempts


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial=1, maximum=8, factor=2, jitter=0, rng=random.Random(1))
    assert [b.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    b.reset()
    assert b.next_delay() == 1


def test_jitter_stays_within_bounds() -> None:
    b = Backoff(initial=10, maximum=10, jitter=0.3, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(200)]
    assert all(7 <= d <= 13 for d in delays)
    assert len(set(delays)) > 100


def test_attempts_stop_at_deadline_with_injected_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    deadline = Deadline(10, clock=lambda: now[0])
    tries = list(attempts(Backoff(initial=1, maximum=4, jitter=0), deadline, sleep))
    assert tries == [1, 2, 3, 4, 5]
    assert sum(slept) == 10  # 1 + 2 + 4 + 3 (clipped to the deadline)
