"""The websocket hub of one evented process: its open connections and what they share.

Created once at process start (gevent process or single mode) with the
process's dispatcher, session store and pool. It turns client events into
subscriptions, keeps the counters that metrics read, maps errors to close codes
(through rtbus.errors, in one place), and closes every connection with 1001 in
batches on a graceful stop, so that reconnecting clients do not all hit the
next process's database pool at the same instant.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import operator
import time

import gevent
import gevent.event

from rtbus.metrics.histogram import Histogram
from rtbus.websocket import events
from rtbus.websocket.budget import ReceiveBudget
from rtbus.websocket.deflate import CompressionPolicy, DeflateParams, OutgoingMessages
from rtbus.websocket.deflate import is_compressed_frame
from rtbus.websocket.frames import CloseCode
from rtbus.websocket.timers import TimerQueue

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WebsocketSettings:
    """The websocket tunables, read once from the configuration (`from_config`); their
    defaults live in the settings table only."""

    max_message_size: int
    keep_alive_timeout: float
    ping_interval: float
    response_timeout: float
    rate_limit_burst: int
    rate_limit_delay: float
    send_timeout: float
    mailbox_max_bytes: int
    close_batch: int
    close_interval: float
    receive_budget: int
    compression: bool
    compression_threshold: int
    compression_level: int

    @classmethod
    def from_config(cls, config) -> "WebsocketSettings":
        return cls(
            max_message_size=config.websocket_max_message_size,
            keep_alive_timeout=config.websocket_keep_alive_timeout,
            ping_interval=config.websocket_ping_interval,
            response_timeout=config.websocket_response_timeout,
            rate_limit_burst=config.websocket_rate_limit_burst,
            rate_limit_delay=config.websocket_rate_limit_delay,
            send_timeout=config.websocket_send_timeout,
            mailbox_max_bytes=config.mailbox_max_bytes,
            close_batch=config.effective("websocket_close_batch"),
            close_interval=config.websocket_close_interval,
            receive_budget=config.websocket_receive_budget,
            compression=config.websocket_compression,
            compression_threshold=config.websocket_compression_threshold,
            compression_level=config.websocket_compression_level,
        )


class Hub:
    """Open websockets of this process and the services they use."""

    def __init__(self, settings: WebsocketSettings, *, dispatcher, sessions, policy, hooks, pool,
                 presence=None, followers=None, notifier=None):
        from rtbus.session_followers import SessionFollowers

        self.settings = settings
        self.dispatcher = dispatcher
        self.sessions = sessions
        # Told when a session changes (NOTIFY rtbus_session): its connections re-check it.
        self.followers = followers if followers is not None else SessionFollowers()
        self.policy = policy
        self.hooks = hooks
        self.pool = pool
        self.presence = presence
        self.notifier = notifier    # what after-subscribe hooks publish with
        self.connections: dict[int, object] = {}
        self._emptied = gevent.event.Event()     # set when the last connection is forgotten
        self.counters: collections.Counter = collections.Counter()
        self.closes: collections.Counter = collections.Counter()    # by close code
        # NOTIFY received → batch sent, per batch sent (see rtbus.metrics.families).
        self.latency = Histogram()
        self.sent = SentBatches(self.latency)
        self.stopping = False
        # What every connection's partially received messages may hold, together.
        self.receive_budget = ReceiveBudget(settings.receive_budget)
        policy = (CompressionPolicy(settings.compression_threshold, settings.compression_level)
                  if settings.compression else None)
        # Batches framed (and compressed) once for all the connections that send them.
        self.outgoing = OutgoingMessages(policy)
        # Every connection's next deadline (ping, answer, lifetime) on one loop timer.
        self.timers = TimerQueue(operator.methodcaller("timer_due"))
        # Connections whose session changed, re-checked in order by one greenlet.
        self._to_recheck: dict[int, object] = {}
        self._rechecker = None

    # -- connections -----------------------------------------------------
    def serve(self, sock, session, *, remote: str, initial: bytes = b"", outdated: bool = False,
              expired: bool = False, deflate: DeflateParams | None = None, on_end=None) -> None:
        """Serve one websocket from now on, and return at once: no greenlet waits for an
        idle websocket. `on_end()` is called once, when it is over and forgotten.

        `outdated`: the client runs an old worker version; `expired`: its cookie
        named a session that is no longer valid (`session` is then the public one);
        `deflate`: what permessage-deflate negotiation agreed, if it was.
        """
        from rtbus.websocket.connection import WebsocketConnection

        connection = WebsocketConnection(self, sock, session, remote=remote, initial=initial,
                                         deflate=deflate, on_end=on_end)
        self.connections[connection.id] = connection
        connection.following = self.followers.follow(
            session, lambda: self._session_changed(connection))
        self.counters["opened"] += 1
        if deflate is not None:
            self.counters["deflate_negotiated"] += 1
        if self.presence is not None and not expired and not session.is_public:
            self.presence.connection_opened(session)
        if outdated:
            # Accepted, then closed with a *clean* code, so the client does not
            # reconnect and tells its user to reload the page.
            connection.close(CloseCode.CLEAN, "OUTDATED_VERSION")
        elif expired:
            connection.close(CloseCode.SESSION_EXPIRED, "session expired")
        elif self.stopping:
            connection.close(CloseCode.GOING_AWAY, "server stopping")
        connection.start()

    def forget(self, connection) -> None:
        if self.connections.pop(connection.id, None) is not None:
            if not self.connections:
                self._emptied.set()
            self.followers.unfollow(connection.following)
            # Every session: the presence service ignores visitors itself, a forwarding
            # one (rtbus.auth) tells the application of a guest's close too.
            if self.presence is not None:
                try:
                    self.presence.connection_closed(connection.session)
                except Exception as exc:     # the connection is gone either way
                    _logger.warning("%s: could not record the presence change: %s", connection, exc)

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "server stopping") -> int:
        """Close every connection with `code`, `close_batch` at a time; return how many."""
        self.stopping = True
        targets = list(self.connections.values())
        batch = max(1, self.settings.close_batch)
        if targets:
            _logger.info("closing %d websockets with %d, %d every %.2f s",
                         len(targets), code, batch, self.settings.close_interval)
        for start in range(0, len(targets), batch):
            for connection in targets[start:start + batch]:
                connection.close(code, reason)
            if start + batch < len(targets):
                gevent.sleep(self.settings.close_interval)
        return len(targets)

    def wait_closed(self, timeout: float) -> int:
        """Wait up to `timeout` s for every connection to be over (after `close_all`);
        return how many are left."""
        deadline = time.monotonic() + timeout
        while self.connections:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._emptied.clear()
            self._emptied.wait(remaining)
        return len(self.connections)

    def drop_all(self) -> int:
        """Drop every connection's TCP connection now, without a close frame (a fast
        stop); their ends run in greenlets of their own. Returns how many."""
        targets = list(self.connections.values())
        for connection in targets:
            connection.abort()
        return len(targets)

    # -- sessions that change --------------------------------------------
    def _session_changed(self, connection) -> None:
        # A SessionFollowers callback (the dispatcher's greenlet): queue, never block.
        self._to_recheck[connection.id] = connection
        if self._rechecker is None:
            self._rechecker = gevent.spawn(self._recheck)

    def _recheck(self) -> None:
        try:
            while self._to_recheck:
                _, connection = self._to_recheck.popitem()
                connection.reauthorize()
        finally:
            # No switch between the emptiness check above and this line: a change
            # queued meanwhile found the greenlet still running and is handled by it.
            self._rechecker = None

    def resubscribe(self, connection) -> None:
        """Authorize `connection`'s last subscribe again under its current session: the
        channels it may no longer hear are dropped, the server's new ones added."""
        from rtbus.bus.authorization import authorize

        request = connection.subscribe_request
        subscription = authorize(connection.session, request.channels, self.policy)
        connection.session = subscription.session_or(connection.session)
        self.dispatcher.subscribe(connection, connection.dbname, list(subscription.channels),
                                  request.last, connection.mailbox)
        self.counters["reauthorizations"] += 1

    # -- events ----------------------------------------------------------
    def handle_event(self, connection, event: events.ClientEvent) -> None:
        """Act on one client event; raises InvalidEvent/ValueError for bad ones."""
        if event.name == "subscribe":
            self.subscribe(connection, events.parse_subscribe(event.data))
        elif event.name == "update_presence":
            inactivity = events.parse_inactivity(event.data)
            if self.presence is not None:
                self.presence.update_presence(connection.session, inactivity)
        else:
            _logger.debug("%s: event %r has no handler", connection, event.name[:40])

    def subscribe(self, connection, request: events.SubscribeRequest) -> None:
        from rtbus.bus.authorization import SubscribeContext, authorize

        subscription = authorize(connection.session, request.channels, self.policy)
        connection.session = subscription.session_or(connection.session)
        self.dispatcher.subscribe(connection, connection.dbname, list(subscription.channels),
                                  request.last, connection.mailbox)
        connection.subscribe_request = request
        self.counters["subscriptions"] += 1
        if self.hooks is not None and len(self.hooks):
            context = SubscribeContext(pool=self.pool, transport="websocket", notifier=self.notifier,
                                       extra={"connection": connection.id, "remote": connection.remote})
            self.hooks.run(connection.session, subscription, context)

    # -- errors and counters ---------------------------------------------
    def count_close(self, code) -> None:
        self.closes[int(code)] += 1

    def stats(self) -> dict:
        budget = self.receive_budget
        sent = self.sent.counts()     # first: it books the pending write-through run
        return {"open": len(self.connections), **self.counters, **sent,
                "closes": dict(self.closes), "receive_budget_used": budget.used,
                "receive_budget_peak": budget.peak, "receive_budget_refusals": budget.refusals,
                "latency": self.latency.snapshot()}


class SentBatches:
    """What the connections sent: batches, bytes, compressed and written-through batches,
    and the delivery latency of each.

    The counts are slot integers rather than entries of the hub's `collections.Counter`,
    whose `+=` costs about three times a plain attribute's. `counts()` gives them under
    their `stats()` names.

    A writer greenlet's send is booked at once (`count`). Write-through sends come in
    runs, one per fan-out: every subscriber of one batch, in a row, from the dispatcher's
    greenlet, with the same shared frame. `through` only notes the send time of each;
    the run is booked as a whole (counts, and the latencies with one
    `Histogram.observe_elapsed`) when a send of another frame or `since` comes, or before
    anything reads the counts (`flush`, called by `counts()`), so that what is read
    equals what booking each send gives.
    """

    COUNTS = ("batches_sent", "batch_bytes_sent", "batches_compressed", "batches_written_through")
    __slots__ = ("latency", *COUNTS, "_run_frame", "_run_since", "_run_times")

    def __init__(self, latency: Histogram):
        self.latency = latency
        self.batches_sent = 0
        self.batch_bytes_sent = 0
        self.batches_compressed = 0
        self.batches_written_through = 0
        self._run_frame: bytes | None = None    # the frame of the run not yet booked
        self._run_since: float | None = None
        self._run_times: list[float] = []       # when each send of the run was done

    def count(self, frame: bytes, since: float | None, written_through: bool,
              now: float | None = None) -> None:
        """One batch sent as `frame`; `since` is when its NOTIFY arrived (None: unknown),
        `now` the monotonic time it was sent (None: read here)."""
        self.batches_sent += 1
        self.batch_bytes_sent += len(frame)
        if is_compressed_frame(frame):
            self.batches_compressed += 1
        if written_through:
            self.batches_written_through += 1
        if since is not None:
            self.latency.observe((time.monotonic() if now is None else now) - since)

    def through(self, frame: bytes, since: float | None, now: float) -> None:
        """One batch written through as `frame` at `now` (monotonic), booked with its run."""
        if frame is self._run_frame and since == self._run_since:
            self._run_times.append(now)
        else:
            self.flush()
            self._run_frame, self._run_since, self._run_times = frame, since, [now]

    def flush(self) -> None:
        """Book the write-through run not yet booked, if any."""
        frame = self._run_frame
        if frame is None:
            return
        times, since = self._run_times, self._run_since
        self._run_frame = self._run_since = None
        self._run_times = []
        n = len(times)
        self.batches_sent += n
        self.batch_bytes_sent += n * len(frame)
        if is_compressed_frame(frame):
            self.batches_compressed += n
        self.batches_written_through += n
        if since is not None:
            self.latency.observe_elapsed(since, times)

    def counts(self) -> dict:
        self.flush()
        return {name: getattr(self, name) for name in self.COUNTS}
