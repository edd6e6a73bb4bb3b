from __future__ import annotations

import math

import pytest

from bench.histogram import delta, quantile


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.25: 90.0, 0.5: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets, 100) == pytest.approx(0.1)
    assert quantile(0.7, buckets, 100) == pytest.approx(0.1 + 0.15 * 20 / 40)
    assert quantile(0.99, buckets, 100) == pytest.approx(0.25 + 0.25 * 9 / 10)


def test_unseen_observations_are_infinitely_late() -> None:
    buckets = {0.1: 95.0, math.inf: 95.0}
    assert quantile(0.5, buckets, 100) == pytest.approx(0.1 * 50 / 95)
    assert quantile(0.99, buckets, 100) is None
    assert quantile(0.99, {0.1: 10.0, math.inf: 100.0}, 100) is None


def test_delta_subtracts_what_was_there_before_the_load() -> None:
    assert delta({0.1: 15.0, math.inf: 20.0}, {0.1: 5.0, math.inf: 5.0}) == {0.1: 10.0,
                                                                             math.inf: 15.0}
