"""Helpers shared by the fault tests: the binomial interval a percentage must fall in."""

from __future__ import annotations

import math
import statistics


def binomial_99(n: int, p: float) -> tuple[int, int]:
    """The central 99 % interval of Binomial(n, p): [0.5 % quantile, 99.5 % quantile]."""
    cdf = 0.0
    low = high = -1
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if low < 0 and cdf >= 0.005:
            low = k
        if cdf >= 0.995:
            high = k
            break
    return low, high


def added_p50(samples: list[tuple[str, float]], slow: str, fast: str) -> tuple[float, int]:
    """The faulted replica's median minus the clean one's, and how many faulted calls.

    Calls to both replicas are interleaved under the same load, so what the
    test machine adds to every call cancels out and the delay the fault adds
    is left.
    """
    slow_ms = [ms for name, ms in samples if name == slow]
    fast_ms = [ms for name, ms in samples if name == fast]
    assert slow_ms and fast_ms
    return statistics.median(slow_ms) - statistics.median(fast_ms), len(slow_ms)
