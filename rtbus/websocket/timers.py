"""One event-loop timer for the deadlines of every websocket of a process.

Each connection has one next deadline at a time (its ping, the answer to a ping or a
close, the end of its keep-alive lifetime: `WebsocketConnection._next_deadline`), kept
in one heap (rtbus.websocket.edge.Deadlines) under one gevent loop timer armed for the
earliest. Before, every read wait of every connection armed a gevent `Timeout` of its
own (about 0.65 KB per idle websocket, and a timer start and stop per wake-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent

from rtbus.websocket.edge import Deadlines

_logger = logging.getLogger(__name__)

# Items handled by one run of the timer at most: thousands due together (opened in one
# burst) are handled over a few loop iterations, not in one that delays every client.
FIRE_BATCH = 500


class TimerQueue:
    """`set(item, at)` gives `item` its deadline `at` (monotonic seconds; None: none).
    Once it has passed, `on_due(item)` is called from the event loop, once; it must not
    block (it spawns a greenlet for anything that may). Used from one event loop."""

    def __init__(self, on_due: Callable[[object], None], clock=time.monotonic):
        self._on_due = on_due
        self._clock = clock
        self._deadlines = Deadlines(clock)
        self._timer = None
        self._armed_at: float | None = None

    def __len__(self) -> int:
        return len(self._deadlines)

    def set(self, item, at: float | None) -> None:
        if at is None:
            self._deadlines.set(item, None)
            return
        self._deadlines.set(item, at - self._clock())
        if self._armed_at is None or at < self._armed_at:
            self._arm(at)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._armed_at = None

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._timer = gevent.get_hub().loop.timer(max(at - self._clock(), 0.0))
        self._timer.start(self._fire)
        self._armed_at = at

    def _fire(self) -> None:
        self._timer = self._armed_at = None
        due = self._deadlines.due(FIRE_BATCH)
        for item in due:
            try:
                self._on_due(item)
            except BaseException:       # nothing may escape into the event loop
                _logger.exception("timer of %r failed", item)
        following = self._deadlines.next_at()
        if following is not None and (self._armed_at is None or following < self._armed_at):
            self._arm(following)
