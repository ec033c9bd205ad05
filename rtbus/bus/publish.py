"""Publishing notifications from Python, inside the application's own transaction.

Semantics (those of Odoo 17+'s `bus.bus._sendone`):

* `sendone()` only queues. The rows are INSERTed in one statement just before the
  transaction commits, so they share its fate and its snapshot.
* The NOTIFY is sent only after the commit succeeded: a subscriber woken by it is
  certain to see the rows. A rollback inserts nothing and notifies nothing.
* However many sends a transaction makes, it sends one NOTIFY (per payload part, see
  `notify.notify_payloads`) naming each channel once, in first-seen order.

psycopg2 has no commit hooks, so two ways to get them:

* `BusConnection`, a connection class for `psycopg2.connect(..., connection_factory=
  BusConnection)`, whose `commit()`, `rollback()` and `with conn:` run the hooks;
* `publishing(conn)`, a context manager for any connection, which commits at exit.

The NOTIFY goes to the *imbus database* (`postgres` by default, like Odoo), where the
dispatchers LISTEN: NOTIFY is per database. Each process keeps one small autocommit
connection there per server/role (`Notifier`). When the application's own database is
the imbus database, the NOTIFY runs in a short transaction on the same connection.

`Publisher` / `publish()` send a list of notifications in a transaction of their own,
for the CLI `send` command, the JSON-RPC route and scripts.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from collections.abc import Iterable, Sequence

import orjson
import psycopg2
import psycopg2.extensions
import psycopg2.extras

from rtbus.bus import channels as bus_channels
from rtbus.bus.notify import DEFAULT_FUNCTION, DEFAULT_MAX_LENGTH, notify_payloads, send_notify

_logger = logging.getLogger(__name__)

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def json_default(value):
    """Serialise what orjson does not: Odoo's formats for dates, str() for the rest."""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, datetime.date):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def encode_message(notification_type: str, payload) -> str:
    """Return the `bus_bus.message` text: compact `{"type":...,"payload":...}`."""
    return orjson.dumps({"type": notification_type, "payload": payload},
                        default=json_default, option=_JSON_OPTIONS).decode("utf-8")


# -- the after-commit NOTIFY ------------------------------------------------------------


class Notifier:
    """Sends the after-commit NOTIFYs of one process to the imbus database.

    Thread-safe. Keeps one autocommit connection to `imbus_db_name` per distinct
    server and role it was asked to notify for, reopened after a failure (once per
    call) or after a fork (a child never uses its parent's socket).
    """

    def __init__(self, imbus_db_name: str = "postgres",
                 max_payload_length: int = DEFAULT_MAX_LENGTH,
                 function_name: str = DEFAULT_FUNCTION):
        self.imbus_db_name = imbus_db_name
        self.max_payload_length = max_payload_length
        self.function_name = function_name
        self._lock = threading.Lock()
        self._conns: dict[tuple, psycopg2.extensions.connection] = {}
        self._pid = os.getpid()
        # Connections inherited over fork: kept referenced so that garbage collection
        # never closes them (which would terminate the parent's session).
        self._inherited: list = []
        self.counters = {"notifies": 0, "splits": 0, "connects": 0, "errors": 0}

    @classmethod
    def from_config(cls, config) -> Notifier:
        return cls(config.imbus_db_name, config.notify_payload_max_length, config.notify_function)

    def notify(self, conn, channels: Sequence[str]) -> None:
        """NOTIFY `channels` (encoded) for a transaction `conn` has just committed.

        `conn` supplies the server and credentials; it is used directly (one short
        transaction, committed) when its database is the imbus database. Raises
        psycopg2 errors when the NOTIFY cannot be sent.
        """
        payloads = notify_payloads(channels, self.max_payload_length)
        if not payloads:
            return
        if conn.info.dbname == self.imbus_db_name:
            with conn.cursor() as cur:
                send_notify(cur, payloads, self.function_name)
            if not conn.autocommit:
                # The base-class commit: this NOTIFY transaction must not re-run bus hooks.
                psycopg2.extensions.connection.commit(conn)
        else:
            self._notify_elsewhere(conn, payloads)
        self.counters["notifies"] += len(payloads)
        if len(payloads) > 1:
            self.counters["splits"] += 1

    def stats(self) -> dict:
        """Counters since start: ``notifies`` (payloads sent), ``splits`` (transactions
        whose channels needed several payloads), ``connects``, ``errors``."""
        return dict(self.counters)

    def close(self) -> None:
        """Close the cached imbus connections (those this process opened)."""
        with self._lock:
            self._forget_inherited_locked()
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _notify_elsewhere(self, app_conn, payloads: list[str]) -> None:
        params = {k: v for k, v in app_conn.info.dsn_parameters.items() if k != "password"}
        params["dbname"] = self.imbus_db_name
        key = tuple(sorted(params.items()))
        with self._lock:
            self._forget_inherited_locked()
            for attempt in (1, 2):
                conn = self._conns.get(key)
                try:
                    if conn is None or conn.closed:
                        conn = self._connect(params, app_conn.info.password)
                        self._conns[key] = conn
                    with conn.cursor() as cur:
                        send_notify(cur, payloads, self.function_name)
                    return
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    # A server restart kills the cached connection: retry once on a fresh one.
                    self.counters["errors"] += 1
                    self._conns.pop(key, None)
                    if conn is not None:
                        with contextlib.suppress(psycopg2.Error):
                            conn.close()
                    if attempt == 2:
                        raise

    def _connect(self, params: dict, password: str | None):
        kwargs = dict(params)
        if password:
            kwargs["password"] = password
        kwargs.setdefault("application_name", "rtbus-notify")
        conn = psycopg2.connect(**kwargs)
        conn.autocommit = True
        self.counters["connects"] += 1
        return conn

    def _forget_inherited_locked(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._inherited.extend(self._conns.values())
            self._conns = {}
            self._pid = pid


# -- the per-transaction queue ----------------------------------------------------------


class _Pending:
    """What one transaction has sent: rows to insert and channels to notify."""

    __slots__ = ("rows", "channels")

    def __init__(self):
        self.rows: list[tuple[str, str]] = []
        self.channels: dict[str, None] = {}     # an ordered set

    def add(self, dbname: str, channel, notification_type: str, payload) -> None:
        encoded = bus_channels.encode(dbname, channel)
        self.rows.append((encoded, encode_message(notification_type, payload)))
        self.channels.setdefault(encoded, None)


def insert_rows(cursor, rows: Sequence[tuple[str, str]]) -> list[int]:
    """INSERT `(channel, message)` rows into bus_bus in one statement; return their ids in order."""
    if not rows:
        return []
    result = psycopg2.extras.execute_values(
        cursor, "INSERT INTO bus_bus (channel, message) VALUES %s RETURNING id",
        rows, page_size=len(rows), fetch=True)
    return [row[0] for row in result]


def _flush(conn, pending: _Pending) -> list[int]:
    with conn.cursor() as cur:
        return insert_rows(cur, pending.rows)


def _notify_after_commit(conn, pending: _Pending, notifier: Notifier | None) -> None:
    # The transaction is committed: failing here must not look like a failed commit.
    # Subscribers then see these rows at their dispatcher's next wake-up instead.
    try:
        if notifier is not None:
            notifier.notify(conn, list(pending.channels))
        else:
            # No notifier given: one with Odoo's defaults for this NOTIFY only (an
            # extra connection when the imbus database is another one).
            one_off = Notifier()
            try:
                one_off.notify(conn, list(pending.channels))
            finally:
                one_off.close()
    except Exception:
        _logger.exception("bus rows committed but the NOTIFY of %d channel(s) failed; "
                         "they will be delivered at the dispatcher's next wake-up",
                         len(pending.channels))


class BusConnection(psycopg2.extensions.connection):
    """A psycopg2 connection whose transactions can publish bus notifications.

    Use `psycopg2.connect(..., connection_factory=BusConnection)`, then
    `sendone(conn, ...)` any number of times; `commit()` (or leaving `with conn:`
    without error) inserts the rows, commits, then NOTIFYs; `rollback()` or `close()`
    drops them. Set `bus_notifier` on an instance to NOTIFY through that Notifier;
    without one, each commit uses a Notifier with Odoo's defaults, opened and closed
    for that NOTIFY (see `NOTIFIER_DEFAULT`).
    """

    bus_notifier: Notifier | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bus_pending: _Pending | None = None

    def commit(self):
        self._bus_commit(super().commit)

    def rollback(self):
        self._bus_pending = None
        return super().rollback()

    def close(self):
        self._bus_pending = None
        return super().close()

    def __exit__(self, exc_type, exc, tb):
        # psycopg2's own __exit__ commits in C, bypassing commit() above; it also
        # clears the "entered" flag of `with conn:`, so it must be the one to finish.
        if exc_type is not None:
            self._bus_pending = None
            return super().__exit__(exc_type, exc, tb)
        exit_ = super().__exit__
        self._bus_commit(lambda: exit_(None, None, None))
        return False

    def _bus_commit(self, commit) -> None:
        pending, self._bus_pending = self._bus_pending, None
        if pending is not None:
            try:
                _flush(self, pending)
            except BaseException:
                # Keep the queue with the transaction: the caller will roll back, which
                # drops both.
                self._bus_pending = pending
                raise
        commit()
        if pending is not None:
            _notify_after_commit(self, pending, self.bus_notifier)


# Plain connections inside publishing(): id(conn) -> queue. The context manager bounds
# the entry's lifetime, so ids cannot be recycled while an entry exists.
_plain_pending: dict[int, _Pending] = {}


def _pending_for(conn) -> _Pending:
    if isinstance(conn, BusConnection):
        if conn._bus_pending is None:
            conn._bus_pending = _Pending()
        return conn._bus_pending
    pending = _plain_pending.get(id(conn))
    if pending is None:
        raise RuntimeError(
            "sendone() needs a BusConnection or a connection inside publishing(conn): "
            "a plain psycopg2 connection has no commit hook to send the NOTIFY")
    return pending


def sendone(conn, channel, notification_type: str, payload) -> None:
    """Queue one notification in `conn`'s current transaction.

    `channel` is a string, `(model, id)`, `(model, id, subchannel)` or a list
    anchored to conn's database (channels.channel_with_db). The row is inserted at
    commit and the NOTIFY follows it. On an autocommit connection both happen now.
    Raises InvalidChannel, TypeError (payload not serialisable) or RuntimeError (a
    plain connection outside publishing()).
    """
    sendmany(conn, [(channel, notification_type, payload)])


def sendmany(conn, notifications: Iterable[tuple]) -> None:
    """Queue several `(channel, notification_type, payload)` notifications; see sendone()."""
    if conn.autocommit:
        publish(conn, conn.info.dbname, notifications, notifier=getattr(conn, "bus_notifier", None))
        return
    pending = _pending_for(conn)
    dbname = conn.info.dbname
    for channel, notification_type, payload in notifications:
        pending.add(dbname, channel, notification_type, payload)


@contextlib.contextmanager
def publishing(conn, notifier: Notifier | None = None):
    """Run a block as one publishing transaction on any psycopg2 connection.

    Inside, `sendone(conn, ...)` queues. On normal exit the rows are inserted, the
    connection commits, then the NOTIFY is sent. On an exception the connection rolls
    back and nothing is sent. Yields `conn`. Not reentrant on one connection.
    """
    if isinstance(conn, BusConnection):
        previous, conn.bus_notifier = conn.bus_notifier, notifier or conn.bus_notifier
        try:
            with conn:
                yield conn
        finally:
            conn.bus_notifier = previous
        return
    if id(conn) in _plain_pending:
        raise RuntimeError("publishing() is already active on this connection")
    pending = _plain_pending[id(conn)] = _Pending()
    try:
        try:
            yield conn
            _flush(conn, pending)
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            raise
        conn.commit()
    finally:
        del _plain_pending[id(conn)]
    _notify_after_commit(conn, pending, notifier)


# -- publishing in a transaction of its own -------------------------------------------


class Publisher:
    """Publishes lists of notifications, each list in one transaction of its own."""

    def __init__(self, notifier: Notifier | None = None):
        self.notifier = notifier

    @classmethod
    def from_config(cls, config) -> Publisher:
        return cls(Notifier.from_config(config))

    def publish(self, pool_or_conn, dbname: str,
                notifications: Iterable[tuple]) -> list[int]:
        """Insert `(channel, type, payload)` notifications into `dbname`, commit, NOTIFY.

        `pool_or_conn` is a ConnectionPool (a connection to `dbname` is borrowed) or
        an idle psycopg2 connection to `dbname` (committed). Returns the new bus_bus
        ids in order. Raises InvalidChannel/TypeError before touching the database,
        psycopg2 errors or PoolError from it. A NOTIFY failure after the commit is
        logged, not raised.
        """
        pending = _Pending()
        for channel, notification_type, payload in notifications:
            pending.add(dbname, channel, notification_type, payload)
        if not pending.rows:
            return []
        if isinstance(pool_or_conn, psycopg2.extensions.connection):
            return self._publish_on(pool_or_conn, dbname, pending)
        with pool_or_conn.connection(dbname) as conn:
            return self._publish_on(conn, dbname, pending)

    def _publish_on(self, conn, dbname: str, pending: _Pending) -> list[int]:
        if conn.info.dbname != dbname:
            raise ValueError(f"connection is to database {conn.info.dbname!r}, not {dbname!r}")
        if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            raise RuntimeError("publish() runs its own transaction: the connection is in one")
        try:
            ids = _flush(conn, pending)
        except BaseException:
            if not conn.autocommit:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            raise
        if not conn.autocommit:
            psycopg2.extensions.connection.commit(conn)
        _notify_after_commit(conn, pending, self.notifier)
        return ids


def publish(pool_or_conn, dbname: str, notifications: Iterable[tuple],
            notifier: Notifier | None = None) -> list[int]:
    """`Publisher(notifier).publish(...)`: see Publisher.publish."""
    return Publisher(notifier).publish(pool_or_conn, dbname, notifications)
