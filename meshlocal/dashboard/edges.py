"""Edges of the mesh page: who calls whom, how often, how well, how fast.

The proxy keeps cumulative counts per (server service, client address)
(`proxy.metrics.EdgeMetrics`: a counter increment on the hot path). Once a
second the page samples them; an edge's figures are the difference between
the newest sample and the oldest one inside the window, summed over the
client's addresses (a service has one per replica). Quantiles interpolate
within the histogram's buckets, as Prometheus's `histogram_quantile` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshlocal.proxy.metrics import EDGE_BUCKETS_MS, EdgeMetrics

# (calls, errors, buckets): one key's counts at one sample.
Counts = tuple[int, int, tuple[int, ...]]
Key = tuple[str, str]  # (server service, client address)


@dataclass(frozen=True)
class Edge:
    source: str  # a service, or a pseudo-node ("@public", "@outside")
    target: str
    calls: int
    errors: int
    seconds: float  # what the window covered so far
    p50_ms: float | None
    p99_ms: float | None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "count": self.calls,
            "rate": round(self.rate, 3),
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


def quantile(q: float, buckets: tuple[int, ...] | list[int]) -> float | None:
    """The q-quantile (0..1) of a histogram over EDGE_BUCKETS_MS; None if empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(EDGE_BUCKETS_MS):
                return EDGE_BUCKETS_MS[-1]  # past the last bound: all we can say
            low = EDGE_BUCKETS_MS[i - 1] if i > 0 else 0.0
            high = EDGE_BUCKETS_MS[i]
            return low + (high - low) * (rank - seen) / n
        seen += n
    return EDGE_BUCKETS_MS[-1]


class EdgeWindow:
    """Samples of the proxy's edge counts over the last `window_s` seconds."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, dict[Key, Counts]]] = deque()

    def sample(self, edges: Mapping[Key, EdgeMetrics]) -> None:
        now = self.clock()
        last = self._samples[-1][1] if self._samples else {}
        taken: dict[Key, Counts] = {}
        for key, e in edges.items():
            prev = last.get(key)
            # A TCP first byte adds a latency sample without a call: compare those too.
            if (
                prev is not None
                and prev[0] == e.calls
                and prev[1] == e.errors
                and sum(prev[2]) == sum(e.buckets)
            ):
                taken[key] = prev  # unchanged: shared, so idle edges cost nothing
            else:
                taken[key] = (e.calls, e.errors, tuple(e.buckets))
        self._samples.append((now, taken))
        # Keep one sample at or before the window's start: the baseline.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def edges(self, who: Callable[[str], str]) -> list[Edge]:
        """Per (client node, server service): `who` names a client address's node."""
        if not self._samples:
            return []
        t_new, newest = self._samples[-1]
        t_old, oldest = self._samples[0]
        calls: dict[tuple[str, str], int] = {}
        errors: dict[tuple[str, str], int] = {}
        hist: dict[tuple[str, str], list[int]] = {}
        for (service, client), (c, e, b) in newest.items():
            base = oldest.get((service, client)) if len(self._samples) > 1 else None
            if base is not None and base[0] <= c and base[1] <= e:
                c, e = c - base[0], e - base[1]
                b = tuple(x - y for x, y in zip(b, base[2], strict=True))
            # No baseline (new inside the window) or a reset counter: all of it is new.
            pair = (who(client), service)
            calls[pair] = calls.get(pair, 0) + c
            errors[pair] = errors.get(pair, 0) + e
            acc = hist.setdefault(pair, [0] * len(b))
            for i, n in enumerate(b):
                if n:
                    acc[i] += n
        seconds = t_new - t_old if len(self._samples) > 1 else 0.0
        return [
            Edge(
                source,
                target,
                calls[(source, target)],
                errors[(source, target)],
                seconds,
                quantile(0.5, h),
                quantile(0.99, h),
            )
            for (source, target), h in sorted(hist.items())
        ]
