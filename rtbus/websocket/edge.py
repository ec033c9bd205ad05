"""The evented port's rules against hostile clients, without I/O: connection caps and deadlines.

An HTTP connection on the evented port goes through phases, each with its own bound:

- ``HEAD``: from the accept (or the first byte after a keep-alive pause) until the request
  head is read, `limit_time_header`: a websocket handshake's client side included.
- ``BODY``: until the request body is received, `limit_time_body`. A connection is only
  interrupted while it waits for the body; an application that works on without reading
  it finds the body abandoned (408) when it next reads.
- ``APP``: the application works (a long-poll may be held, a handshake checks its
  session, bounded by the pool's own timeouts); no deadline here.
- ``IDLE``: a kept-alive connection between two requests, `http_keepalive_timeout`.
- ``CLOSING``: a refusal being written, `CLOSING_TIME`, so that a client that reads
  nothing cannot hold the connection either.
- ``UPGRADED``: a websocket, with its own ping timers; counted, but no deadline here.

`Deadlines` keeps every connection's current deadline in one heap, so that one timer can
sweep them all (the gevent layer, rtbus.websocket.pywsgi_edge, owns that timer).
`ConnectionCounts` admits or refuses each connection under the per-client and the
process-wide caps.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import time

from rtbus.session_guard import client_key


class Phase(enum.Enum):
    HEAD = "head"
    BODY = "body"
    APP = "app"
    IDLE = "idle"
    CLOSING = "closing"
    UPGRADED = "upgraded"


CLOSING_TIME = 2.0       # seconds a refusal or a 408 may take to leave
REFUSAL_SLOTS = 256      # connections beyond the process cap that may be answered 503


@dataclasses.dataclass(frozen=True)
class EdgeLimits:
    """The bounds of the evented port, from the settings table (0 disables a cap)."""

    header_time: float
    body_time: float
    keepalive_time: float
    max_head_size: int
    max_connections: int
    max_per_client: int
    proxy_mode: bool

    @classmethod
    def from_config(cls, config) -> EdgeLimits:
        return cls(header_time=config.limit_time_header, body_time=config.limit_time_body,
                   keepalive_time=config.http_keepalive_timeout,
                   max_head_size=config.http_max_head_size,
                   max_connections=config.gevent_max_connections,
                   max_per_client=config.gevent_max_connections_per_client,
                   proxy_mode=config.proxy_mode)

    def time_for(self, phase: Phase) -> float | None:
        """Seconds a connection may stay in `phase`; None: no deadline."""
        return {Phase.HEAD: self.header_time, Phase.BODY: self.body_time,
                Phase.IDLE: self.keepalive_time, Phase.CLOSING: CLOSING_TIME}.get(phase)


class Deadlines:
    """The current deadline of each item, in one heap swept by `due`.

    `set` replaces an item's deadline (None removes it). A replaced or removed entry
    gives up its item at once (its slot is cleared: an ended connection is not kept
    alive by the heap until its old deadline surfaces) and stays as an empty entry,
    skipped when it surfaces; the heap is rebuilt when empty entries outnumber the live
    ones. Not thread-safe: used from one event loop.
    """

    COMPACT_SLACK = 1024
    # A heap entry: [when, sequence number, item or None once superseded]. Lists, so the
    # slot can be cleared; `when` and the unique sequence number decide every comparison.
    _ITEM = 2

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._heap: list[list] = []
        self._current: dict[object, list] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._current)

    def set(self, item, seconds: float | None) -> None:
        """Give `item` a deadline `seconds` from now, or none (None)."""
        old = self._current.pop(item, None)
        if old is not None:
            old[self._ITEM] = None
        if seconds is not None:
            entry = [self._clock() + seconds, next(self._seq), item]
            self._current[item] = entry
            heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._current) + self.COMPACT_SLACK:
            self._compact()

    def due(self, limit: int | None = None) -> list:
        """The items whose deadline passed (at most `limit`, the earliest first), each
        removed from the table; the others stay due for the next call."""
        now = self._clock()
        heap, current = self._heap, self._current
        passed = []
        while heap and heap[0][0] <= now and (limit is None or len(passed) < limit):
            item = heapq.heappop(heap)[self._ITEM]
            if item is not None:
                del current[item]
                passed.append(item)
        return passed

    def next_at(self) -> float | None:
        """The earliest deadline still set (on the table's clock), or None."""
        heap = self._heap
        while heap and heap[0][self._ITEM] is None:
            heapq.heappop(heap)         # superseded or removed
        return heap[0][0] if heap else None

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[self._ITEM] is not None]
        heapq.heapify(self._heap)


class Refusal(enum.Enum):
    """Why a connection is refused: each is answered 503 (a websocket handshake: 1013)."""

    CLIENT = "too many connections from this client"
    PROCESS = "too many connections on this process"


class ConnectionCounts:
    """Connections held per client key (an address; IPv6 by /64) and in all.

    `open` counts a connection under the process; `claim` under its client, once the
    client is known (at the accept, or from the proxy's header in `proxy_mode`). Each
    returns the Refusal when the connection is over a cap (it is then not counted).
    """

    def __init__(self, max_connections: int, max_per_client: int):
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.total = 0
        self.clients: dict[str, int] = {}
        self.refusals = {reason: 0 for reason in Refusal}

    def open(self) -> Refusal | None:
        if self.max_connections and self.total >= self.max_connections:
            self.refusals[Refusal.PROCESS] += 1
            return Refusal.PROCESS
        self.total += 1
        return None

    def close(self) -> None:
        self.total -= 1

    def claim(self, address: str | None) -> tuple[str | None, Refusal | None]:
        """Count a connection under `address`'s key; (the key to release, or None, and the
        refusal, or None)."""
        if not self.max_per_client:
            return None, None
        key = client_key(address)
        held = self.clients.get(key, 0)
        if held >= self.max_per_client:
            self.refusals[Refusal.CLIENT] += 1
            return None, Refusal.CLIENT
        self.clients[key] = held + 1
        return key, None

    def release(self, key: str | None) -> None:
        if key is None:
            return
        held = self.clients.get(key, 0) - 1
        if held > 0:
            self.clients[key] = held
        else:
            self.clients.pop(key, None)
