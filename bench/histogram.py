"""Percentiles from a Prometheus histogram the agent serves, as histogram_quantile()
computes them: the bucket holding the rank, linearly interpolated inside it."""

from __future__ import annotations

import math
import urllib.request


def scrape_buckets(port: int, name: str, labels: str) -> dict[float, float]:
    """Cumulative counts by upper bound (`le`) of `name{labels,le=...}` on the agent's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    prefix = f"{name}_bucket{{"
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        head, _, value = line.rpartition(" ")
        inner = head[len(prefix) : -1]
        parts = dict(p.split("=", 1) for p in inner.split(","))
        le = parts.pop("le").strip('"')
        if ",".join(f"{k}={v}" for k, v in parts.items()) == labels:
            buckets[math.inf if le == "+Inf" else float(le)] = float(value)
    if not buckets:
        raise RuntimeError(f"{name}{{{labels}}} not found on :{port}/metrics")
    return buckets


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def quantile(q: float, buckets: dict[float, float], total: int) -> float | None:
    """The q-quantile of `total` observations of which `buckets` (cumulative) saw
    some; those not seen count as infinitely late (None when the rank is one)."""
    rank = q * total
    lower, below = 0.0, 0.0
    for le in sorted(buckets):
        count = buckets[le]
        if count >= rank and count > below:
            if math.isinf(le):
                return None
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return None
