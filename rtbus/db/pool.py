"""A bounded pool of psycopg2 connections shared by the threads (or greenlets) of one process.

One pool serves several databases: idle connections are kept per database name and,
when the pool is full, the oldest idle connection of another database makes room.
Borrowers that find nothing free queue in FIFO order for at most `timeout` seconds;
a give-back hands its connection (or its freed slot) straight to the first waiter, so
a newcomer never overtakes a waiter. There is no sleep-and-retry anywhere.

The lock is a `threading.Lock`; in the gevent process, monkey patching happens before
this module is imported, so waiting blocks only the greenlet.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import select
import threading
import time
from typing import Callable

import psycopg2
import psycopg2.extensions

from rtbus.errors import PoolError

_logger = logging.getLogger(__name__)

# SQLSTATE classes meaning the session itself is gone: connection exceptions and
# operator intervention (admin/crash shutdown, cannot connect now).
_FATAL_SQLSTATE_PREFIXES = ("08", "57P")

# A waiter's outcome when a slot, rather than a connection, is handed to it.
_SLOT = object()


@dataclasses.dataclass(eq=False)
class _Entry:
    conn: object
    dbname: str
    generation: int
    last_used: float = 0.0


@dataclasses.dataclass(eq=False)
class _Waiter:
    dbname: str
    wakeup: threading.Condition
    outcome: object = None  # None until handed a _Entry or _SLOT


class ConnectionPool:
    """At most `maxconn` connections, opened with `connect_kwargs` plus a dbname.

    `timeout` (seconds) is the default wait for a connection (0: fail at once when
    full); `max_waiting` bounds the queue of borrowers (0: no bound, like the
    db_pool_max_waiting setting); idle connections unused for `idle_timeout`
    seconds are closed; `on_connect(conn)` runs once on each new connection, and if it
    raises the connection is closed and the error propagates to the borrower.
    `clock` (default `time.monotonic`) measures idle ages, the time spent waiting and
    the interval between two warnings; a borrower's timeout is real time whatever it is.

    Connections are lent with psycopg2 defaults (a transaction opens at the first
    statement, not autocommit). On give-back the pool rolls back and restores the
    autocommit/isolation/readonly/deferrable attributes; other session state (SET,
    LISTEN, prepared statements) survives, so a caller that changes it should give the
    connection back with `discard=True`.
    """

    def __init__(self, name: str, maxconn: int, connect_kwargs: dict, *, timeout: float = 1.0,
                 max_waiting: int = 1024, idle_timeout: float = 600.0,
                 on_connect: Callable[[object], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if "dbname" in connect_kwargs or "database" in connect_kwargs:
            raise ValueError("connect_kwargs must not name a database: the pool serves several")
        self.name = name
        self.maxconn = max(int(maxconn), 1)
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.idle_timeout = idle_timeout
        self._connect_kwargs = dict(connect_kwargs)
        self._on_connect = on_connect
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[_Entry] = []            # oldest give-back first
        self._in_use: dict[int, _Entry] = {}     # id(conn) -> entry
        self._opening = 0                        # slots reserved by borrowers now connecting
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._generation = 0                     # bumped by close_all(): older connections are not reused
        self._counters = dict.fromkeys(
            ("borrows", "waits", "pool_errors", "connects", "discards", "dead"), 0)
        self._wait_seconds_total = 0.0
        self._last_warning = float("-inf")
        self._suppressed_warnings = 0

    def __repr__(self):
        with self._lock:
            used = len(self._in_use) + self._opening
            count = used + len(self._idle)
        return f"ConnectionPool({self.name!r}, used={used}/count={count}/max={self.maxconn})"

    # -- public API ------------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self, dbname: str, timeout: float | None = None):
        """Lend a connection to `dbname` for the `with` block, then take it back.

        The caller commits what it wants kept; anything left pending is rolled back.
        If the connection broke inside the block it is discarded rather than reused.
        Raises PoolError if none can be had within `timeout` (default: the pool's).
        """
        conn = self.borrow(dbname, timeout)
        discard = False
        try:
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            discard = _is_fatal(exc) or bool(conn.closed)
            raise
        finally:
            self.give_back(conn, discard=discard)

    def borrow(self, dbname: str, timeout: float | None = None):
        """Return a connection to `dbname`, owned by the caller until give_back().

        Waits at most `timeout` seconds (default: the pool's) when all `maxconn`
        connections are in use. Raises PoolError when the wait times out or the queue
        of waiters is full, and psycopg2 errors when a new connection cannot be opened.
        A connection whose server is gone (its socket reports an error or an end of
        stream, as TCP keepalives make it do for a server that vanished) is discarded
        and another one lent, so the borrower's first query does not fail on it.
        """
        while True:
            conn = self._borrow(dbname, timeout)
            if _still_connected(conn):
                return conn
            with self._lock:
                self._counters["dead"] += 1
            _logger.debug("pool %r: discarded a connection to %s whose server is gone",
                         self.name, dbname)
            self.give_back(conn, discard=True)

    def _borrow(self, dbname: str, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        to_close: list = []
        try:
            with self._lock:
                self._counters["borrows"] += 1
                to_close.extend(self._prune_idle_locked())
                entry = self._take_idle_locked(dbname)
                if entry is not None:
                    return entry.conn
                if self._waiters or (self._size_locked() >= self.maxconn and not self._idle):
                    # Waiters exist only while the pool is full with nothing idle, so a
                    # newcomer queues behind them rather than overtaking.
                    outcome = self._wait_locked(dbname, timeout)
                    if outcome is not _SLOT:
                        return outcome.conn
                elif self._size_locked() >= self.maxconn:
                    # Full, but an idle connection of another database can make room.
                    victim = self._idle.pop(0)
                    self._counters["discards"] += 1
                    to_close.append(victim.conn)
                    self._opening += 1
                else:
                    self._opening += 1
        finally:
            _close_quietly(to_close)
        return self._open(dbname)

    def give_back(self, conn, *, discard: bool = False) -> None:
        """Return `conn` to the pool; with `discard=True` (or if it is broken) close it instead.

        Raises PoolError if `conn` is not currently lent by this pool.
        """
        with self._lock:
            entry = self._in_use.get(id(conn))
            if entry is None or entry.conn is not conn:
                raise PoolError(f"connection {conn!r} does not belong to pool {self.name!r} "
                                "(or was already given back)")
        # Rolling back is a round trip to the server: do it outside the lock.
        if not discard:
            discard = not _reset(conn)
        with self._lock:
            if self._in_use.pop(id(conn), None) is None:
                raise PoolError(f"connection {conn!r} was given back twice to pool {self.name!r}")
            if discard or entry.generation != self._generation:
                self._counters["discards"] += 1
                self._release_slot_locked()
            else:
                entry.last_used = self._clock()
                conn = self._hand_over_locked(entry)
        if conn is not None:
            _close_quietly([conn])

    def close_all(self) -> None:
        """Close every idle connection now; connections in use are closed when given back.

        The prefork master calls this before forking so no child inherits a socket.
        """
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        _close_quietly([entry.conn for entry in idle])

    def stats(self) -> dict:
        """A snapshot of the pool's gauges and counters (plain ints and floats)."""
        with self._lock:
            return {
                "name": self.name,
                "maxconn": self.maxconn,
                "in_use": len(self._in_use) + self._opening,
                "idle": len(self._idle),
                "waiting": len(self._waiters),
                **self._counters,
                "wait_seconds_total": self._wait_seconds_total,
            }

    # -- internals (the *_locked methods expect self._lock held) ----------------------------

    def _size_locked(self) -> int:
        return len(self._in_use) + self._opening + len(self._idle)

    def _prune_idle_locked(self) -> list:
        """Drop idle connections that are closed or unused for too long; return those to close."""
        cutoff = self._clock() - self.idle_timeout
        keep, drop = [], []
        for entry in self._idle:
            (drop if entry.conn.closed or entry.last_used < cutoff else keep).append(entry)
        if drop:
            self._idle = keep
            self._counters["discards"] += len(drop)
        return [entry.conn for entry in drop]

    def _take_idle_locked(self, dbname: str) -> _Entry | None:
        # The most recently used one: the others can age out through idle_timeout.
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index].dbname == dbname:
                entry = self._idle.pop(index)
                self._in_use[id(entry.conn)] = entry
                return entry
        return None

    def _wait_locked(self, dbname: str, timeout: float):
        """Queue until handed a connection entry or a slot; raise PoolError on timeout or overflow."""
        if 0 < self.max_waiting <= len(self._waiters):
            raise self._error_locked(
                f"pool {self.name!r} exhausted: {len(self._waiters)} borrowers already waiting "
                f"(max_waiting {self.max_waiting})")
        waiter = _Waiter(dbname, threading.Condition(self._lock))
        self._waiters.append(waiter)
        self._counters["waits"] += 1
        started = self._clock()
        deadline = time.monotonic() + timeout
        try:
            while waiter.outcome is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                waiter.wakeup.wait(remaining)
        except BaseException:
            # Interrupted (KeyboardInterrupt, a gevent Timeout...): whatever was handed
            # over meanwhile must go back, or the pool would lose a slot for good.
            self._abandon_locked(waiter)
            raise
        finally:
            self._wait_seconds_total += self._clock() - started
        if waiter.outcome is None:
            self._waiters.remove(waiter)
            raise self._error_locked(
                f"pool {self.name!r} exhausted: no connection free after {timeout:.2f} s")
        return waiter.outcome

    def _abandon_locked(self, waiter: _Waiter) -> None:
        if waiter.outcome is None:
            self._waiters.remove(waiter)
        elif waiter.outcome is _SLOT:
            self._opening -= 1
            self._release_slot_locked()
        else:
            del self._in_use[id(waiter.outcome.conn)]
            conn = self._hand_over_locked(waiter.outcome)
            if conn is not None:
                _close_quietly([conn])

    def _hand_over_locked(self, entry: _Entry):
        """Give a healthy connection to the first waiter, or keep it idle.

        Returns a connection the caller must close (outside the lock), or None.
        Whatever is handed over is accounted for at once (in use, or a reserved slot),
        so the pool never counts fewer connections than exist.
        """
        if not self._waiters:
            self._idle.append(entry)
            return None
        waiter = self._waiters.popleft()
        waiter.wakeup.notify()
        if waiter.dbname == entry.dbname:
            self._in_use[id(entry.conn)] = entry
            waiter.outcome = entry
            return None
        # Wrong database: close it and let the waiter open its own in the freed slot.
        self._counters["discards"] += 1
        self._opening += 1
        waiter.outcome = _SLOT
        return entry.conn

    def _release_slot_locked(self) -> None:
        """A connection (or a reserved slot) is gone: pass the slot to the first waiter, if any."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.outcome = _SLOT
            self._opening += 1
            waiter.wakeup.notify()

    def _open(self, dbname: str):
        """Open a connection in a slot already reserved in self._opening."""
        conn = None
        try:
            conn = psycopg2.connect(**self._connect_kwargs, dbname=dbname)
            if self._on_connect is not None:
                self._on_connect(conn)
        except BaseException:
            if conn is not None:
                _close_quietly([conn])
            with self._lock:
                self._opening -= 1
                self._release_slot_locked()
            raise
        with self._lock:
            self._opening -= 1
            self._counters["connects"] += 1
            self._in_use[id(conn)] = _Entry(conn, dbname, self._generation)
        return conn

    def _error_locked(self, reason: str) -> PoolError:
        """Count a pool error, log it (rate-limited) and return the exception to raise."""
        self._counters["pool_errors"] += 1
        in_use = len(self._in_use) + self._opening
        message = (f"{reason} ({in_use}/{self._size_locked()} in use, "
                   f"{len(self._waiters)} waiting, max {self.maxconn})")
        now = self._clock()
        if now - self._last_warning >= 1.0:
            suppressed, self._suppressed_warnings = self._suppressed_warnings, 0
            self._last_warning = now
            if suppressed:
                _logger.warning("%s; %d similar errors suppressed since the last report",
                               message, suppressed)
            else:
                _logger.warning("%s", message)
        else:
            self._suppressed_warnings += 1
        return PoolError(message)


def _reset(conn) -> bool:
    """Bring a returned connection back to its lent state; False if it is unusable."""
    if conn.closed:
        return False
    try:
        status = conn.info.transaction_status
        if status == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN:
            return False
        if status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            conn.rollback()
        if conn.autocommit:
            conn.autocommit = False
        if conn.isolation_level is not None or conn.readonly is not None or conn.deferrable is not None:
            conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT", deferrable="DEFAULT")
        del conn.notifies[:]
        del conn.notices[:]
    except psycopg2.Error:
        return False
    return True


def _still_connected(conn) -> bool:
    """False when the socket of a connection idle on our side reports anything.

    Between two statements the server has nothing to say: a readable socket means an end
    of stream, an error (a keepalive that went unanswered) or the server's last words
    before it closed the session. The check does not wait (timeout 0).
    """
    if conn.closed:
        return False
    try:
        fd = conn.fileno()
        readable, _, failed = select.select([fd], [], [fd], 0)
    except (OSError, ValueError, psycopg2.Error):
        return False
    return not readable and not failed


def _is_fatal(exc: psycopg2.Error) -> bool:
    """Whether an error raised while using a connection means the session is lost.

    Errors the server reports without ending the session (a serialization failure, a
    cancelled statement) leave the connection reusable after rollback.
    """
    code = exc.pgcode
    return code is None or code.startswith(_FATAL_SQLSTATE_PREFIXES)


def _close_quietly(conns) -> None:
    for conn in conns:
        with contextlib.suppress(psycopg2.Error):
            conn.close()
