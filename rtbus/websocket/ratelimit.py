"""Per-connection frame rate limit, Odoo's rule: at most `burst` frames in any sliding
window of `burst * delay` seconds."""

from __future__ import annotations

from collections import deque


class RateLimiter:
    """Count frame arrivals and refuse the one that would exceed the burst.

    Keeps the arrival times of the last `burst` accepted frames. A frame is refused
    when `burst` frames already arrived within the last `burst * delay` seconds; a
    refused frame is not recorded (the connection is closed with 1013 anyway). Time is
    passed in by the caller, so the rule is testable without a clock.
    """

    def __init__(self, burst: int = 10, delay: float = 0.2):
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        if delay < 0:
            raise ValueError(f"delay must not be negative, not {delay}")
        self.burst = burst
        self.delay = delay
        self.window = burst * delay
        self._arrivals: deque[float] = deque(maxlen=burst)

    def allow(self, now: float) -> bool:
        """Record a frame arriving at `now` (monotonic seconds); False if it is one too many."""
        arrivals = self._arrivals
        if len(arrivals) == self.burst and now - arrivals[0] < self.window:
            return False
        arrivals.append(now)
        return True
