"""What was published and what each client received: the books the report is made from.

- `PublishLog`: every id the bench published, per channel, in order.
- `Received`: one client's record of ids, one byte per id above the run's first id,
  so duplicates are seen at once and lost ids are counted at the end of a stage.
- `Histogram`: latencies in fixed buckets (0.1 ms wide below 100 ms, 1 ms wide up
  to 60 s), so recording is O(1) and a stage of millions of deliveries stays small.
- `Meter`: the counters of the running stage, shared by every client.
"""

from __future__ import annotations

import collections
import time

_FINE_BUCKETS = 1000          # 0.1 ms each, below 100 ms
_COARSE_LIMIT_MS = 60_000     # 1 ms buckets up to here; one overflow bucket above
_BUCKETS = _FINE_BUCKETS + (_COARSE_LIMIT_MS - 100) + 1
MAX_TRACKED_IDS = 50_000_000  # ids further than this above the run's first id are ignored


class Histogram:
    """Latency samples (seconds in, milliseconds out)."""

    __slots__ = ("counts", "count", "max", "total")

    def __init__(self):
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.max = 0.0
        self.total = 0.0

    def record(self, seconds: float) -> None:
        ms = seconds * 1000.0
        if ms < 100.0:
            index = int(ms * 10.0) if ms > 0.0 else 0
        elif ms < _COARSE_LIMIT_MS:
            index = _FINE_BUCKETS - 100 + int(ms)
        else:
            index = _BUCKETS - 1
        self.counts[index] += 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def quantile(self, q: float) -> float | None:
        """The upper edge (ms) of the bucket holding quantile `q`, capped by the max."""
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for index, n in enumerate(self.counts):
            seen += n
            if n and seen >= rank:
                edge = (index + 1) / 10.0 if index < _FINE_BUCKETS else index - _FINE_BUCKETS + 101.0
                return min(edge, self.max)
        return self.max

    def summary(self) -> dict:
        """count, p50, p90, p99, max and mean in ms (None without samples)."""
        if not self.count:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
        return {"count": self.count, "p50": self.quantile(0.50), "p90": self.quantile(0.90),
                "p99": self.quantile(0.99), "max": round(self.max, 2),
                "mean": round(self.total / self.count, 2)}


class Meter:
    """Counters of the stage being run, updated by every client and the publisher."""

    def __init__(self, name: str = ""):
        self.name = name
        self.started = time.monotonic()
        self.latency = Histogram()            # publish -> receive, per delivery
        self.latency_by_kind = {"ws": Histogram(), "lp": Histogram()}
        self.handshake = Histogram()          # TCP connect + upgrade, per websocket
        self.publish = Histogram()            # one publish call (insert, commit, notify)
        self.deliveries = 0
        self.duplicates = 0
        self.first_delivery: float | None = None
        self.last_delivery: float | None = None
        self.closes: collections.Counter = collections.Counter()   # close code -> count
        self.errors: collections.Counter = collections.Counter()   # error kind -> count
        self.connects = 0
        self.published = 0
        self.wire_bytes = 0                   # bytes websockets read, as on the wire

    def delivered(self, now: float, count: int) -> None:
        self.deliveries += count
        if self.first_delivery is None:
            self.first_delivery = now
        self.last_delivery = now


class PublishLog:
    """Ids published by the bench, per channel index, in publish order."""

    def __init__(self, channels: int):
        self.by_channel: list[list[int]] = [[] for _ in range(channels)]
        self.count = 0
        self.last_id = 0

    def add(self, channel: int, notification_id: int) -> None:
        self.by_channel[channel].append(notification_id)
        self.count += 1
        if notification_id > self.last_id:
            self.last_id = notification_id

    def mark(self) -> list[int]:
        """Positions to pass to `since` later: what is published after now."""
        return [len(ids) for ids in self.by_channel]

    def since(self, mark: list[int], channel: int) -> list[int]:
        return self.by_channel[channel][mark[channel]:]

    def last_on(self, channel: int) -> int:
        ids = self.by_channel[channel]
        return ids[-1] if ids else 0


class Received:
    """The ids one client has received, above the run's `base` id."""

    __slots__ = ("base", "seen", "count", "duplicates", "max_id")

    def __init__(self, base: int):
        self.base = base
        self.seen = bytearray()
        self.count = 0
        self.duplicates = 0
        self.max_id = 0

    def record(self, pairs, now: float, meter: Meter, kind: str) -> int:
        """Book (raw id, raw publish time) pairs received at `now` by a client of
        `kind` ("ws" or "lp"); returns the highest id."""
        seen, base = self.seen, self.base
        latency, by_kind = meter.latency, meter.latency_by_kind[kind]
        fresh = 0
        top = self.max_id
        for raw_id, raw_time in pairs:
            notification_id = int(raw_id)
            offset = notification_id - base
            if offset < 0 or offset > MAX_TRACKED_IDS:
                continue
            if offset >= len(seen):
                seen.extend(bytes(offset - len(seen) + 256))
            if seen[offset]:
                self.duplicates += 1
                meter.duplicates += 1
                continue
            seen[offset] = 1
            fresh += 1
            if notification_id > top:
                top = notification_id
            elapsed = now - float(raw_time)
            latency.record(elapsed)
            by_kind.record(elapsed)
        self.count += fresh
        self.max_id = top
        if fresh:
            meter.delivered(now, fresh)
        return top

    def missing(self, ids: list[int]) -> int:
        """How many of `ids` this client has not received."""
        seen, base, size = self.seen, self.base, len(self.seen)
        lost = 0
        for notification_id in ids:
            offset = notification_id - base
            if offset < 0:
                continue
            if offset >= size or not seen[offset]:
                lost += 1
        return lost
