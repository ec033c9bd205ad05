"""Requests for the evented routes that reached a prefork HTTP worker.

``/websocket`` and ``/longpolling/poll`` hold a connection for long; an HTTP worker
serving one would be blocked for that long (Odoo ≤15 operators knew it as
"bus.Bus unavailable"). The worker answers at once instead, with a sentence naming
the longpolling port, and warns in its log at most once a minute per route, with the
number of such requests since the previous warning, so that a misconfigured proxy
is visible without flooding the log.
"""

from __future__ import annotations

import logging
import threading
import time

_logger = logging.getLogger(__name__)

LOG_INTERVAL = 60.0   # seconds between two warnings about the same route


class _Tally:
    __slots__ = ("last_logged", "since")

    def __init__(self):
        self.last_logged = float("-inf")
        self.since = 0


_tallies: dict[str, _Tally] = {}
_lock = threading.Lock()


def report(route: str, message: str, remote: str | None, *, clock=time.monotonic) -> bool:
    """Count one misrouted request to `route`; log `message` if the last warning about
    that route is LOG_INTERVAL old. Returns True when it logged."""
    with _lock:
        tally = _tallies.setdefault(route, _Tally())
        tally.since += 1
        now = clock()
        if now - tally.last_logged < LOG_INTERVAL:
            return False
        count, tally.since, tally.last_logged = tally.since, 0, now
    _logger.warning("%s (%d such request(s) since the last warning; last from %s)",
                    message, count, remote or "?")
    return True
