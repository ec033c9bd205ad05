"""ImDispatch: LISTEN `imbus`, read the bus stream once per wake-up, fan rows out to mailboxes.

One dispatcher per process that holds subscribers (the gevent process, or the single
process when workers=0), created and started explicitly at process start. Its thread
(a greenlet under gevent's monkey-patching: only threading, select, time and psycopg2
are used) reads wake-ups and rows through a source (rtbus.bus.source); the default,
PostgresSource, owns direct connections, not pooled ones:

* one LISTENing on the imbus database (`postgres` by default), where the Python API
  NOTIFYs for every database of the cluster;
* one on each served database, LISTENing too (the SQL function NOTIFYs in its own
  database) and used for reading that database's bus stream.

Per wake-up and per database it makes ONE call, whatever the number of subscribers:
rtbus_bus_stream_next(), which records an epoch (the snapshot it read with) and returns
the rows that became visible since this dispatcher's previous epoch, each with its
stream position (epoch, id); see rtbus.db migration 0006 and docs/architecture.md.
rtbus.bus.cycle groups them by subscriber and encodes each distinct batch once.

What a subscriber gets and how its cursor moves is rtbus.bus.delivery's job (no I/O):
it is caught up after the position of its `last` (rtbus_bus_replay(), paged by
`Limits`), then gets the live rows. No time window: a late commit is delivered when
it commits, and never twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable

from rtbus.bus import channels as bus_channels
from rtbus.bus import cycle, delivery
from rtbus.bus.cycle import Database
from rtbus.bus.delivery import Limits, Subscriber
from rtbus.bus.mailbox import Mailbox
from rtbus.bus.notify import IMBUS
from rtbus.bus.source import Control, PostgresSource, Source

__all__ = ["ImDispatch", "Mailbox"]

_logger = logging.getLogger(__name__)

BACKLOG_SECONDS = 50.0        # Odoo's TIMEOUT: what `last = 0` replays
IDLE_FETCH_SECONDS = 30.0     # safety-net fetch when no NOTIFY came (a lost NOTIFY)
BACKOFF_FIRST = 0.25          # seconds; jittered down to half, so < 0.5 s
BACKOFF_MAX = 5.0
STATEMENT_TIMEOUT_MS = 30_000


@dataclasses.dataclass
class _Request:
    key: object
    dbname: str | None = None            # None: unsubscribe
    channels: frozenset[str] = frozenset()
    last: int = 0
    mailbox: Mailbox | None = None


class ImDispatch:
    """The per-process bus dispatcher. See the module docstring for the guarantees.

    `connect_kwargs(dbname)` returns psycopg2.connect() keyword arguments for a
    database. `databases` are the databases whose subscribers this dispatcher serves;
    `imbus_db_name` is where the Python API NOTIFYs. subscribe(), unsubscribe() and
    stats() are thread-safe and never block on the database.

    `source` is where the wake-ups and rows come from (rtbus.bus.source); by default
    the PostgreSQL one built from `connect_kwargs`, `imbus_db_name` and the timeouts.
    """

    def __init__(self, connect_kwargs: Callable[[str], dict], databases: Iterable[str], *,
                 imbus_db_name: str = "postgres",
                 backlog_seconds: float = BACKLOG_SECONDS,
                 idle_fetch_seconds: float = IDLE_FETCH_SECONDS,
                 backoff_first: float = BACKOFF_FIRST, backoff_max: float = BACKOFF_MAX,
                 limits: Limits = Limits(),
                 application_name: str = "rtbus-imdispatch",
                 statement_timeout_ms: int = STATEMENT_TIMEOUT_MS, lock_timeout_ms: int = 0,
                 source: Source | None = None):
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.imbus_db_name = imbus_db_name
        self.backlog_seconds = backlog_seconds
        self.limits = limits
        self.idle_fetch_seconds = idle_fetch_seconds
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.application_name = application_name
        self._dbs = {name: Database(name) for name in databases}
        if source is None:
            source = PostgresSource(connect_kwargs, self._dbs, imbus_db_name=imbus_db_name,
                                    application_name=application_name,
                                    statement_timeout_ms=statement_timeout_ms,
                                    lock_timeout_ms=lock_timeout_ms)
        self._source = source
        self._subs: dict[object, Subscriber] = {}     # owned by the dispatcher thread
        self._requests: list[_Request] = []
        self._requests_lock = threading.Lock()
        self._requested = 0                       # requests enqueued so far
        self._taken = 0                           # requests taken by the thread
        self._applied = 0                         # ... and fully served (catch-ups delivered)
        self._applied_cond = threading.Condition(self._requests_lock)
        self._stopping = threading.Event()
        self._first_round = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._outage_since: float | None = None
        self._outage_attempts = 0
        self._next_attempt = 0.0
        self._listeners: dict[str, Callable[[str, str], None]] = {}
        self._counters = dict.fromkeys(
            ("wakeups", "notifies", "queries", "live_queries", "catchup_queries",
             "rows_fetched", "deliveries", "batches_encoded", "mailbox_puts", "overflows",
             "listen_connects", "listen_reconnects", "catchup_pages", "regressions"), 0)

    @classmethod
    def from_config(cls, config, databases: Iterable[str] | None = None, **kwargs) -> ImDispatch:
        """A dispatcher for the config's served databases (or `databases`)."""
        from rtbus.db.connect import connect_kwargs, milliseconds, served_databases

        def kwargs_for(dbname: str) -> dict:
            return connect_kwargs(config, dbname=dbname, application_name="rtbus-imdispatch")

        if databases is None:
            databases = served_databases(config)
        # The fetches are statements like any other: the operator's guard rails apply
        # (the idle wait on a LISTEN socket is not a statement and never times out).
        if config.db_statement_timeout:
            kwargs.setdefault("statement_timeout_ms", milliseconds(config.db_statement_timeout))
        if config.db_lock_timeout:
            kwargs.setdefault("lock_timeout_ms", milliseconds(config.db_lock_timeout))
        kwargs.setdefault("limits", Limits.from_config(config))
        return cls(kwargs_for, databases, imbus_db_name=config.imbus_db_name, **kwargs)

    def listen(self, channel: str, callback: Callable[[str, str], None]) -> None:
        """Also LISTEN on `channel` in every served database; call `callback(dbname, payload)`.

        For small control messages that ride on the dispatcher's connections (session
        invalidations). Call before start(). `callback` runs on the dispatcher thread
        and must not block; after a LISTEN connection is (re)established it is called
        with payload ``"*"``, since notifications sent meanwhile were missed.
        """
        if self._thread is not None:
            raise RuntimeError("listen() must be called before start()")
        if not channel.isidentifier() or channel == IMBUS:
            raise ValueError(f"invalid extra NOTIFY channel {channel!r}")
        self._listeners[channel] = callback
        self._source.listen(channel)

    # -- lifecycle (any thread) -----------------------------------------------------------

    def start(self, wait: float | None = 10.0) -> bool:
        """Start the dispatcher thread; wait up to `wait` s for its first connection round.

        Returns True when every LISTEN connection is up. When some are not, the thread
        keeps retrying with backoff and the method returns False. Raises RuntimeError
        if already started.
        """
        if self._thread is not None:
            raise RuntimeError("ImDispatch already started")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name="rtbus.bus.dispatch", daemon=True)
        self._thread.start()
        if wait:
            self._first_round.wait(wait)
        return all(self._source.up(feed) for feed in self._source.feeds)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and close its connections; True if it ended within `timeout`."""
        if self._thread is None:
            return True
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return stopped

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- subscriptions (any thread) -------------------------------------------------------

    def subscribe(self, subscriber_key, dbname: str, channels: Iterable[str], last: int,
                  mailbox: Mailbox) -> None:
        """Set the channels of `subscriber_key` (replacing its previous set).

        `channels` are encoded channels anchored to `dbname`. The first `last` of a
        subscriber is adopted (later ones are ignored, as in Odoo 17+): everything
        after its stream position on its channels is delivered, or the last
        `backlog_seconds` when it is 0 or above the database's max id. A channel added
        by a later subscribe is caught up from the last notification delivered to this
        subscriber. A
        different dbname or mailbox for a known key starts a new subscription.
        Raises InvalidChannel, or ValueError for a database not served.
        """
        if dbname not in self._dbs:
            raise ValueError(f"database {dbname!r} is not served by this dispatcher "
                             f"(serving: {', '.join(sorted(self._dbs)) or 'none'})")
        wanted = frozenset(channels)
        for channel in wanted:
            if bus_channels.database_of(channel) != dbname:
                raise bus_channels.InvalidChannel(
                    f"channel {channel} is not anchored to database {dbname!r}")
        self._enqueue(_Request(subscriber_key, dbname, wanted, max(int(last or 0), 0), mailbox))

    def unsubscribe(self, subscriber_key) -> None:
        """Forget a subscriber; a batch may still reach its mailbox until this is processed."""
        self._enqueue(_Request(subscriber_key))

    def stats(self) -> dict:
        """Counters since start, plus gauges: subscribers, channels, listen_connections,
        catchups (subscribers still being caught up), outage."""
        stats = dict(self._counters)
        dbs = list(self._dbs.values())
        stats["subscribers"] = len(self._subs)
        stats["channels"] = sum(len(db.subscribers) for db in dbs)
        stats["catchups"] = sum(len(db.catchups) for db in dbs)
        stats["listen_connections"] = sum(map(self._source.up, self._source.feeds))
        stats["outage"] = not self.listening
        return stats

    @property
    def listening(self) -> bool:
        """False during an outage: no LISTEN link would wake a waiting subscriber."""
        return self._outage_since is None

    def wait_applied(self, timeout: float = 5.0) -> bool:
        """Wait until every subscribe/unsubscribe made before this call took effect.

        "Took effect" includes the delivery of their catch-up to the mailboxes. Returns
        False on timeout (a database feed down keeps catch-ups waiting).
        """
        deadline = time.monotonic() + timeout
        with self._applied_cond:
            target = self._requested
            while self._applied < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._applied_cond.wait(remaining)
        return True

    def _enqueue(self, request: _Request) -> None:
        with self._requests_lock:
            self._requests.append(request)
            self._requested += 1
        self._wake()

    def _wake(self) -> None:
        # A full pipe already guarantees a wake-up.
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    # -- the dispatcher thread --------------------------------------------------------------

    def _run(self) -> None:
        _logger.info("ImDispatch listening on %r in database(s) %s for %d served database(s)",
                    IMBUS, ", ".join(self._source.feeds), len(self._dbs))
        try:
            self._reconnect(initial=True)
            self._first_round.set()
            while not self._stopping.is_set():
                try:
                    self._iterate()
                except Exception:
                    # A bug, not a connection problem (those are handled where they occur):
                    # keep serving, but do not spin.
                    _logger.exception("ImDispatch iteration failed")
                    self._stopping.wait(1.0)
        finally:
            self._first_round.set()
            for feed in self._source.feeds:
                self._source.close(feed)
            _logger.info("ImDispatch stopped")

    def _iterate(self) -> None:
        now = time.monotonic()
        woken, ready = self._source.wait(self._next_timeout(now), self._wake_r)
        if self._stopping.is_set():
            return
        if woken:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)
        notified = False
        if ready:
            # Read every feed, not only the ready ones: a session revocation
            # NOTIFYed on a served database just before a publish NOTIFYed on the
            # imbus database must be applied before that publish is delivered.
            ready = set(self._source.feeds)
        for feed in self._source.feeds:
            if self._source.up(feed) and feed in ready:
                notified |= self._read_feed(feed)
        if notified:
            self._counters["wakeups"] += 1
        self._apply_requests()
        now = time.monotonic()
        if self._outage_since is not None and now >= self._next_attempt:
            self._reconnect()
        for db in self._dbs.values():
            if (db.subscribers or db.stale) and now - db.last_fetch >= self.idle_fetch_seconds:
                db.woken = True
            if (db.woken or db.runnable_catchups()) and self._source.up(db.name):
                self._cycle(db)
        if not any(not catchup.pages for db in self._dbs.values()
                   for catchup in db.catchups.values()):
            with self._applied_cond:
                if self._applied != self._taken:
                    self._applied = self._taken
                    self._applied_cond.notify_all()

    def _next_timeout(self, now: float) -> float:
        timeout = self.idle_fetch_seconds
        if any(db.catchups for db in self._dbs.values()):
            timeout = cycle.PAGE_WAIT_SECONDS
        if self._outage_since is not None:
            timeout = min(timeout, self._next_attempt - now)
        return max(timeout, 0.0)

    # -- notifications ------------------------------------------------------------------------

    def _read_feed(self, feed: str) -> bool:
        """Consume what the feed received, mark the databases to fetch; True if any came."""
        try:
            events = self._source.read(feed)
        except self._source.errors as exc:
            self._feed_failed(feed, exc)
            return False
        for event in events:
            if isinstance(event, Control):
                if event.channel in self._listeners:
                    self._call_listener(event.channel, event.database, event.payload)
            else:
                self._counters["notifies"] += 1
                self._wake_databases(event.announced)
        return bool(events)

    def _call_listener(self, channel: str, dbname: str, payload: str) -> None:
        try:
            self._listeners[channel](dbname, payload)
        except Exception:
            _logger.exception("ImDispatch: the %r listener failed", channel)

    def _wake_databases(self, announced: list[tuple[str, str | None]]) -> None:
        """Mark for fetching the databases with a subscriber on an announced channel."""
        for name, channel in announced:
            db = self._dbs.get(name) if isinstance(name, str) else None
            if db is None:
                continue
            if channel is None or channel in db.subscribers:
                self._notified(db)
            else:
                # Nobody here listens to it: no query now, the cursor catches up later.
                db.stale = True

    @staticmethod
    def _notified(db: Database) -> None:
        db.woken = True
        if db.notified_at is None:
            # PostgreSQL sends a NOTIFY at commit: this is when the rows became visible,
            # the start of the delivery latency the transports measure.
            db.notified_at = time.monotonic()

    # -- subscription requests --------------------------------------------------------------

    def _apply_requests(self) -> None:
        with self._requests_lock:
            requests, self._requests = self._requests, []
            self._taken += len(requests)
        for request in requests:
            if request.dbname is None:
                self._remove(request.key)
            else:
                self._apply_subscribe(request)

    def _remove(self, key) -> None:
        sub = self._subs.pop(key, None)
        if sub is None:
            return
        db = self._dbs[sub.dbname]
        for channel in sub.channels:
            db.unregister(channel, sub)
        db.catchups.pop(sub, None)

    def _apply_subscribe(self, request: _Request) -> None:
        sub = self._subs.get(request.key)
        if sub is not None and (sub.dbname != request.dbname or sub.mailbox is not request.mailbox):
            self._remove(request.key)
            sub = None
        if sub is None:
            sub = self._subs[request.key] = Subscriber(request.key, request.dbname,
                                                       request.mailbox)
        db = self._dbs[request.dbname]
        for channel in sub.channels - request.channels:
            db.unregister(channel, sub)
        # Added channels are registered when their catch-up, read in a cycle, completes.
        catchup = delivery.start_catchup(sub, request.channels, request.last)
        if catchup is not None:
            db.catchups[sub] = catchup

    # -- one read-and-deliver cycle for one database ----------------------------------------

    def _cycle(self, db: Database) -> None:
        try:
            with self._source.reader(db.name) as reader:
                epoch, live, regressed = reader.next(db.epoch, self.backlog_seconds, db.where)
                self._count_query(len(live))
                if regressed:
                    self._regressed(db, epoch)
                pages = cycle.read_catchups(reader, db, epoch, self.backlog_seconds,
                                            self.limits, self._count_query)
        except self._source.errors as exc:
            # The cycle is undone: the epoch stays, so the next read returns these rows
            # again (the epochs recorded meanwhile included), and the catch-ups wait.
            db.last_fetch = time.monotonic()
            if self._source.lost(exc, db.name):
                db.woken = True
                self._feed_failed(db.name, exc)
            else:
                # Not the connection (bus_bus missing, say): retried at the idle interval.
                db.woken = False
                _logger.error("ImDispatch fetch failed in database %s: %s; retrying in %.0f s",
                             db.name, str(exc).strip(), self.idle_fetch_seconds)
            return
        db.epoch = epoch
        db.woken = db.stale = False
        db.last_fetch = time.monotonic()
        notified_at, db.notified_at = db.notified_at, None
        cycle.deliver(delivery.fan_out(db.subscribers, live), self.limits, self._counters,
                      notified_at if live else None)
        cycle.deliver(cycle.finish_pages(db, pages, self._subs, self.limits, self._counters),
                      self.limits, self._counters)

    def _count_query(self, rows: int, catchup: bool = False) -> None:
        counters = self._counters
        counters["queries"] += 1
        counters["catchup_queries" if catchup else "live_queries"] += 1
        counters["rows_fetched"] += rows

    def _regressed(self, db: Database, epoch: int) -> None:
        self._counters["regressions"] += 1
        subs = [sub for sub in self._subs.values() if sub.dbname == db.name]
        _logger.warning("ImDispatch: the bus stream of database %s went backwards (bus_bus "
                       "truncated with RESTART IDENTITY, sequence reset or restore): it "
                       "restarts at epoch %d; %d subscriber(s) carry on", db.name, epoch, len(subs))
        delivery.restart(subs, epoch)

    # -- connections and outages ----------------------------------------------------------------

    def _reconnect(self, initial: bool = False) -> None:
        """Open every feed that is down; start, continue or end the outage accordingly."""
        self._outage_attempts += 0 if initial else 1
        failures = []
        for feed in self._source.feeds:
            if self._source.up(feed):
                continue
            try:
                self._open_feed(feed)
            except self._source.errors as exc:
                failures.append((feed, exc))
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    _logger.warning("ImDispatch cannot LISTEN in database %s: %s; retrying "
                                   "with backoff", feed, str(exc).strip())
                # The imbus link first: without it, a served link's cursor could be
                # read after NOTIFYs it will never hear.
                break
        now = time.monotonic()
        if failures:
            self._next_attempt = now + self._backoff(self._outage_attempts)
            return
        if self._outage_since is not None and not initial:
            self._counters["listen_reconnects"] += 1
            _logger.info("ImDispatch LISTEN restored after %.1f s and %d attempts",
                        now - self._outage_since, self._outage_attempts)
        self._outage_since = None
        self._outage_attempts = 0
        # Anything committed while we were deaf is above the cursors: fetch everywhere.
        for db in self._dbs.values():
            db.woken = True

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_first * (2 ** attempt))
        return random.uniform(ceiling / 2, ceiling)

    def _open_feed(self, feed: str) -> None:
        db = self._dbs.get(feed)
        epoch = self._source.open(feed, db is not None and db.epoch is None,
                                  self.backlog_seconds)
        if db is not None and db.epoch is None:
            db.epoch = epoch
            self._count_query(0)
        self._counters["listen_connects"] += 1
        if db is not None:
            for channel in self._listeners:
                self._call_listener(channel, feed, "*")

    def _feed_failed(self, feed: str, exc: BaseException) -> None:
        self._source.close(feed)
        if self._stopping.is_set():
            return
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outage_attempts = 0
            self._next_attempt = self._outage_since + self._backoff(0)
            _logger.warning("ImDispatch lost its LISTEN connection to database %s (%s); "
                           "reconnecting with backoff", feed, str(exc).strip())
        else:
            _logger.debug("ImDispatch: LISTEN connection to %s also lost: %s", feed, exc)
        for db in self._dbs.values():
            db.woken = True
