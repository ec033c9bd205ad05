"""Per-connection frame rate limit, Odoo's rule: at most `burst` frames in any sliding
window of `burst * delay` seconds."""

from __future__ import annotations

from array import array


class RateLimiter:
    """Count frame arrivals and refuse the one that would exceed the burst.

    Keeps the arrival times of the last `burst` accepted frames. A frame is refused
    when `burst` frames already arrived within the last `burst * delay` seconds; a
    refused frame is not recorded (the connection is closed with 1013 anyway). Time is
    passed in by the caller, so the rule is testable without a clock.
    """

    __slots__ = ("burst", "delay", "window", "_arrivals", "_count", "_oldest")

    def __init__(self, burst: int = 10, delay: float = 0.2):
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        if delay < 0:
            raise ValueError(f"delay must not be negative, not {delay}")
        self.burst = burst
        self.delay = delay
        self.window = burst * delay
        # A ring of the last `burst` arrival times: 8 bytes each, where an empty deque
        # costs 760 bytes per connection.
        self._arrivals = array("d", bytes(8 * burst))
        self._count = 0                  # arrivals recorded, up to burst
        self._oldest = 0                 # once full: the slot of the oldest, next overwritten

    def allow(self, now: float) -> bool:
        """Record a frame arriving at `now` (monotonic seconds); False if it is one too many."""
        if self._count < self.burst:
            self._arrivals[self._count] = now
            self._count += 1
            return True
        oldest = self._oldest
        if now - self._arrivals[oldest] < self.window:
            return False
        self._arrivals[oldest] = now
        self._oldest = (oldest + 1) % self.burst
        return True
