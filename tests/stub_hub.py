"""What a WebsocketConnection uses of its hub, with the real settings and public sessions
only: for the tests that serve connections over socketpairs in one gevent loop, and for
perf/ws_fanout.py and perf/ws_idle.py."""

from __future__ import annotations

import collections
import operator

from rtbus.config import Config
from rtbus.metrics.histogram import Histogram
from rtbus.websocket.budget import ReceiveBudget
from rtbus.websocket.deflate import OutgoingMessages
from rtbus.websocket.hub import WebsocketSettings
from rtbus.websocket.timers import TimerQueue

try:   # the hub's send counts; older trees kept them in hub.counters
    from rtbus.websocket.hub import SentBatches
except ImportError:
    SentBatches = None


class StubHub:
    """Settings, counters, frames and timers as the real hub has them; the dispatcher
    and session store are the hub itself, recording unsubscribes and forgotten
    connections, and every session is valid."""

    def __init__(self):
        self.settings = WebsocketSettings.from_config(Config.defaults())
        self.receive_budget = ReceiveBudget(self.settings.receive_budget)
        self.counters = collections.Counter()
        self.latency = Histogram()
        if SentBatches is not None:
            self.sent = SentBatches(self.latency)
        self.outgoing = OutgoingMessages(None)
        self.timers = TimerQueue(operator.methodcaller("timer_due"))
        self.dispatcher = self.sessions = self
        self.unsubscribed: list = []
        self.forgotten: list = []

    def sent_count(self, name: str) -> int:
        """A send count (`batches_sent`...), wherever this tree keeps it."""
        sent = getattr(self, "sent", None)
        return self.counters[name] + (sent.counts()[name] if sent is not None else 0)

    def unsubscribe(self, connection) -> None:
        self.unsubscribed.append(connection)

    def check(self, session):
        return session

    check_cached = check

    def forget(self, connection) -> None:
        self.forgotten.append(connection)

    def count_close(self, code) -> None:
        pass
