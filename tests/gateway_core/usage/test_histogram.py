"""The latency histogram: buckets, and percentiles estimated within one bucket's width."""

from __future__ import annotations

import math
import random

import pytest

from gateway_core.usage import histogram


def exact_percentile(latencies: list[int], fraction: float) -> int:
    """Nearest-rank percentile of the raw latencies."""
    ordered = sorted(latencies)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def test_the_bounds_rise_and_every_latency_has_one_bucket() -> None:
    bounds = histogram.LATENCY_BOUNDS_MS
    assert list(bounds) == sorted(set(bounds))
    assert len(bounds) + 1 == histogram.BUCKETS
    assert histogram.bucket_of(0) == 0
    assert histogram.bucket_of(bounds[0]) == 0  # a bound belongs to the bucket it closes
    assert histogram.bucket_of(bounds[0] + 1) == 1
    assert histogram.bucket_of(10**9) == histogram.BUCKETS - 1


def test_no_requests_have_no_percentile() -> None:
    assert histogram.percentile(histogram.empty(), 0.5) is None


def test_slower_than_the_last_bound_reads_as_the_last_bound() -> None:
    counts = histogram.empty()
    counts[-1] = 3
    assert histogram.percentile(counts, 0.95) == histogram.LATENCY_BOUNDS_MS[-1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_estimates_fall_in_the_bucket_of_the_true_percentile(seed: int, fraction: float) -> None:
    rng = random.Random(seed)
    latencies = [int(rng.lognormvariate(5.5, 1.2)) for _ in range(rng.randint(1, 3000))]
    counts = histogram.empty()
    for latency in latencies:
        counts[histogram.bucket_of(latency)] += 1
    estimate = histogram.percentile(counts, fraction)
    assert estimate is not None
    lower, upper = histogram.bucket_range(histogram.bucket_of(exact_percentile(latencies, fraction)))
    assert lower <= estimate <= (upper if upper is not None else lower)
