"""Helpers shared by the fault tests: the binomial interval a percentage must fall in."""

from __future__ import annotations

import math


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
