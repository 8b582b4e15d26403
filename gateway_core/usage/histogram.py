"""The latency histogram of the hourly rollups: fixed bucket bounds, and percentiles estimated from it.

A rollup stores ``len(LATENCY_BOUNDS_MS) + 1`` counts: bucket ``i`` counts requests that took at most
``LATENCY_BOUNDS_MS[i]`` milliseconds (and more than the bound before it); the last bucket counts the
slower ones. Percentiles are interpolated within the bucket they fall in, so an estimate is off by at
most the width of that bucket. The bounds are part of the stored data: never change them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

#: Upper bounds (milliseconds) of the histogram buckets; roughly 1.3 to 2 times apart.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000,
    5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 45_000, 60_000, 90_000, 120_000, 180_000, 300_000,
    600_000,
)  # fmt: skip
#: Counts per rollup: one per bound and one for the slower requests.
BUCKETS = len(LATENCY_BOUNDS_MS) + 1


def bucket_of(latency_ms: int) -> int:
    """The index of the bucket a latency falls in."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def bucket_range(index: int) -> tuple[int, int | None]:
    """The lower and upper bound (ms) of a bucket; the last bucket has no upper bound."""
    lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0
    upper = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else None
    return lower, upper


def empty() -> list[int]:
    return [0] * BUCKETS


def merge(total: list[int], counts: Iterable[int]) -> list[int]:
    """Add ``counts`` to ``total`` in place (a shorter or malformed list adds what it has)."""
    for index, count in enumerate(counts):
        if index >= BUCKETS:
            break
        total[index] += int(count)
    return total


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """The latency (ms) under which ``fraction`` of the requests fall, estimated; None without requests.

    Nearest-rank: the bucket holding the request of rank ``ceil(fraction * total)``, interpolated
    linearly within it. In the last, unbounded bucket the estimate is its lower bound.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index, count in enumerate(counts):
        if count <= 0:
            continue
        if seen + count >= rank:
            lower, upper = bucket_range(index)
            if upper is None:
                return float(lower)
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])
