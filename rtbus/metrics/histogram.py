"""A fixed-bucket histogram, cheap enough to observe on every send, or once for many."""

from __future__ import annotations

import bisect
import math

# Seconds: from "same millisecond" to "a client was stuck for a while".
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive), their sum and count.

    Not locked: observe from one thread (the gevent hub's greenlets share one).
    """

    def __init__(self, buckets=LATENCY_BUCKETS):
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("histogram buckets must be increasing and distinct")
        self.buckets = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.buckets) + 1)   # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if not value > 0.0:      # negative, or NaN: counted as 0 (max(), but cheaper per call)
            value = 0.0
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def observe_elapsed(self, start: float, ends: list[float]) -> None:
        """Observe `end - start` for every end of `ends`, which must not decrease: the
        same buckets and count as one `observe` each, for about two bisections per
        bucket the values span rather than a call per value (the sum is rounded once)."""
        n = len(ends)
        if not n:
            return
        buckets, counts = self.buckets, self.counts
        first = bisect.bisect_left(buckets, ends[0] - start)
        last = bisect.bisect_left(buckets, ends[-1] - start)
        if first == last:
            counts[first] += n
        else:
            elapsed = lambda end: end - start     # noqa: E731
            below = 0     # how many of ends fall in the buckets before index `i`
            for i in range(first, last):
                upto = bisect.bisect_right(ends, buckets[i], below, n, key=elapsed)
                counts[i] += upto - below
                below = upto
            counts[last] += n - below
        self.sum += math.fsum([end - start if end > start else 0.0 for end in ends])
        self.count += n

    def snapshot(self) -> dict:
        """{"buckets": [...], "counts": [...non-cumulative, +Inf last], "sum", "count"}."""
        return {"buckets": list(self.buckets), "counts": list(self.counts),
                "sum": self.sum, "count": self.count}
