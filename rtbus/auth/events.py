"""Presence updates and closes forwarded to the application, batched, bounded.

With ``auth_proxy_url`` set, the application keeps presence (Odoo's mail.presence),
so `ForwardingPresence` takes the place of rtbus.bus.presence.PresenceService: each
``update_presence`` event and each closed connection (websocket close, the
``/websocket/on_closed`` route) becomes one entry in a bounded queue, and one sender
(a thread; a greenlet under gevent) POSTs them to ``<url>/events`` in batches:

    {"events": [{"type": "update_presence", "db": ..., "sid": ..., "uid": ...,
                 "inactivity_period": <ms>},
                {"type": "closed", "db": ..., "sid": ..., "uid": ...}, ...]}

Each event also carries ``"cookies"``: the forwarded cookies of its session
(``auth_proxy_cookies``, such as a guest's token), so that a guest's close reaches it.

A full queue drops the new event (counted: presence is refreshed by the client's next
update anyway); a failed batch is dropped too (counted, logged), never retried into a
growing backlog. Nothing here blocks the caller.
"""

from __future__ import annotations

import collections
import logging
import threading

from rtbus.auth.client import ProxyClient
from rtbus.bus.presence import check_inactivity
from rtbus.errors import AuthProxyUnavailable
from rtbus.session import Session

_logger = logging.getLogger(__name__)

EVENTS_PATH = "events"
BATCH_SIZE = 500


class EventForwarder:
    """A bounded queue of events and the sender that empties it into `client`."""

    def __init__(self, client: ProxyClient, max_queued: int, *, batch_size: int = BATCH_SIZE):
        self.client = client
        self.max_queued = int(max_queued)
        self.batch_size = int(batch_size)
        self._queue: collections.deque[dict] = collections.deque()
        self._ready = threading.Condition()
        self._sender: threading.Thread | None = None
        self._stopped = False
        self.counters = collections.Counter()

    def put(self, event: dict) -> bool:
        """Queue `event`; False when the queue is full (the event is dropped)."""
        with self._ready:
            if len(self._queue) >= self.max_queued:
                self.counters["dropped"] += 1
                return False
            self._queue.append(event)
            self.counters["queued"] += 1
            if self._sender is None and not self._stopped:
                self._sender = threading.Thread(target=self._run, daemon=True,
                                                name="rtbus.auth.events")
                self._sender.start()
            self._ready.notify()
        return True

    def stats(self) -> dict:
        """Events queued, sent, dropped (queue full) and failed, and the queue's length."""
        return {"queued": self.counters["queued"], "sent": self.counters["sent"],
                "dropped": self.counters["dropped"], "failed": self.counters["failed"],
                "pending": len(self._queue)}

    def pending(self) -> int:
        return len(self._queue)

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()

    def _next_batch(self) -> list[dict] | None:
        with self._ready:
            while not self._queue and not self._stopped:
                self._ready.wait()
            if not self._queue:
                return None
            count = min(len(self._queue), self.batch_size)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self.client.post(EVENTS_PATH, {"events": batch})
            except AuthProxyUnavailable as exc:
                self.counters["failed"] += len(batch)
                _logger.warning("could not forward %d event(s) to the application: %s "
                               "(%d still queued)", len(batch), exc, len(self._queue))
            except Exception:
                self.counters["failed"] += len(batch)
                _logger.exception("forwarding %d event(s) to the application failed", len(batch))
            else:
                self.counters["sent"] += len(batch)
                self.counters["batches"] += 1


class ForwardingPresence:
    """PresenceService's interface, forwarding to the application instead of writing."""

    def __init__(self, forwarder: EventForwarder):
        self.forwarder = forwarder

    def update_presence(self, session: Session, inactivity_period) -> None:
        """Forward `update_presence` of a signed-in session, or of a visitor with forwarded
        cookies (a guest's token); InvalidPresence for a bad period."""
        inactivity = check_inactivity(inactivity_period)
        if (session.is_public or session.sid is None) and not session.forwarded_cookies:
            return None
        self.forwarder.put({**_who(session), "type": "update_presence",
                            "inactivity_period": inactivity})
        return None

    def set_offline(self, session: Session) -> bool:
        """`/websocket/on_closed`: forwarded for any session with a cookie, session_id or a
        forwarded one such as a guest's (the application knows its guests and users;
        rtbus may not have met them yet)."""
        if session.sid is None and not session.forwarded_cookies:
            return False
        return self.forwarder.put({**_who(session), "type": "closed"})

    def connection_opened(self, session: Session) -> int:
        return 0    # the application learns of a connection from its subscription

    def connection_closed(self, session: Session) -> bool:
        return self.set_offline(session)

    def on_presence_notify(self, dbname: str, payload: str) -> None:
        """``rtbus_presence``: nothing to write back, the application keeps presence (each
        connection's close is forwarded to it, and it knows which tabs are left)."""
        return None


def _who(session: Session) -> dict:
    return {"db": session.dbname, "sid": session.sid, "uid": session.uid,
            "cookies": dict(session.forwarded_cookies)}
