"""The dispatcher's source: where its wake-ups and its rows come from.

ImDispatch (rtbus.bus.dispatch) needs two things from outside, and only these:

* wake-ups: something to wait on, and, once woken, which databases and channels were
  announced (`Source.wait`, `Source.read`);
* rows: per database, the stream read of one wake-up and the replay pages of catch-ups
  (`Source.reader`, a `Reader`).

`PostgresSource` is today's implementation: one direct connection ("feed") LISTENing on
`imbus` in the imbus database and one in each served database, the latter also used for
the stream reads of rtbus.bus.stream. A broker (docs/scaling.md) is another class with
the same methods. Outages, backoff and the fetch policy stay in the dispatcher: a source
only opens, closes, waits and reads, and raises `errors` when it cannot.
"""

from __future__ import annotations

import contextlib
import selectors
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol

import orjson
import psycopg2

from rtbus.bus import channels as bus_channels
from rtbus.bus import stream
from rtbus.bus.delivery import CatchUp, Replayed, Row
from rtbus.bus.notify import IMBUS


class Wakeup(NamedTuple):
    """One announcement ("rows may exist"): (database, encoded channel) pairs.

    A channel None means "anything in that database": fetch whoever listens.
    """
    announced: list[tuple[str, str | None]]


class Control(NamedTuple):
    """A message on an extra channel (ImDispatch.listen), for `database`."""
    channel: str
    database: str
    payload: str


class Reader(Protocol):
    """The rows of one database, for one cycle."""

    def next(self, after: int | None, backlog: float, where: str = ""
             ) -> tuple[int, list[Row], bool]: ...

    def replay(self, catchup: CatchUp, epoch: int, channels: Sequence[str], backlog: float,
               limit: int, where: str = "") -> Replayed: ...


class Source(Protocol):
    """Wake-ups and rows for one dispatcher. Only the dispatcher thread calls it.

    Feeds are named; `feeds` lists them in opening order, and a served database's
    rows are read through the feed of the same name.
    """

    errors: tuple[type[BaseException], ...]   # what the methods below raise on failure

    @property
    def feeds(self) -> list[str]: ...

    def listen(self, channel: str) -> None:
        """Also carry the extra `channel` (Control messages); before any open()."""

    def up(self, feed: str) -> bool: ...

    def open(self, feed: str, read_epoch: bool, backlog: float) -> int | None:
        """Open `feed`; with `read_epoch`, return the stream's current epoch."""

    def close(self, feed: str) -> None: ...

    def lost(self, exc: BaseException, feed: str) -> bool:
        """Whether `exc`, raised by a read on `feed`, means the feed is gone."""

    def wait(self, timeout: float, wake_fd: int) -> tuple[bool, set[str]]:
        """Wait up to `timeout`: (`wake_fd` readable, the feeds with something to read)."""

    def read(self, feed: str) -> list[Wakeup | Control]:
        """Consume what `feed` received, in order."""

    def reader(self, database: str) -> contextlib.AbstractContextManager[Reader]: ...


class _Link:
    """A direct connection LISTENing on `imbus` in one database."""

    def __init__(self, dbname: str):
        self.dbname = dbname
        self.conn = None

    @property
    def up(self) -> bool:
        return self.conn is not None


class _CursorReader:
    def __init__(self, cur):
        self.cur = cur

    def next(self, after, backlog, where=""):
        return stream.read_next(self.cur, after, backlog, where)

    def replay(self, catchup, epoch, channels, backlog, limit, where=""):
        return stream.replay(self.cur, catchup, epoch, channels, backlog, limit, where)


class PostgresSource:
    """LISTEN/NOTIFY for the wake-ups, rtbus.bus.stream's SQL for the rows.

    The imbus feed is opened first: LISTEN there before reading any start-up cursor.
    """

    errors = (psycopg2.Error,)

    def __init__(self, connect_kwargs: Callable[[str], dict], databases: Iterable[str], *,
                 imbus_db_name: str = "postgres", application_name: str = "rtbus-imdispatch",
                 statement_timeout_ms: int = 30_000, lock_timeout_ms: int = 0):
        self._connect_kwargs = connect_kwargs
        self.imbus_db_name = imbus_db_name
        self.application_name = application_name
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.databases = list(databases)
        self.links = {name: _Link(name) for name in [imbus_db_name, *self.databases]}
        self._channels: list[str] = []

    @property
    def feeds(self) -> list[str]:
        return list(self.links)

    def listen(self, channel: str) -> None:
        self._channels.append(channel)

    def up(self, feed: str) -> bool:
        return self.links[feed].up

    def open(self, feed: str, read_epoch: bool, backlog: float) -> int | None:
        link = self.links[feed]
        served = feed in self.databases
        kwargs = dict(self._connect_kwargs(feed))
        kwargs["dbname"] = feed
        kwargs.setdefault("application_name", self.application_name)
        # A vanished server (no FIN: power loss, partition) must not leave us deaf forever.
        for key, value in (("keepalives", 1), ("keepalives_idle", 30),
                           ("keepalives_interval", 10), ("keepalives_count", 3),
                           ("connect_timeout", 5)):
            kwargs.setdefault(key, value)
        conn = psycopg2.connect(**kwargs)
        epoch = None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (self.statement_timeout_ms,))
                if self.lock_timeout_ms:
                    cur.execute("SET lock_timeout = %s", (self.lock_timeout_ms,))
                cur.execute("LISTEN " + IMBUS)
                if served:
                    for channel in self._channels:
                        cur.execute("LISTEN " + channel)
                    # The epoch records are not worth an fsync each: lost in a crash,
                    # the rows they placed are placed again by the next epoch.
                    cur.execute("SET synchronous_commit = off")
                if served and read_epoch:
                    epoch, _, _ = stream.read_next(cur, None, backlog)
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            raise
        link.conn = conn
        return epoch

    def close(self, feed: str) -> None:
        link = self.links[feed]
        conn, link.conn = link.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def lost(self, exc: BaseException, feed: str) -> bool:
        conn = self.links[feed].conn
        return (isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
                or conn is None or conn.closed)

    def wait(self, timeout: float, wake_fd: int) -> tuple[bool, set[str]]:
        up = [link for link in self.links.values() if link.up]
        # libpq reads NOTIFYs that arrive while a query runs on the same connection
        # into conn.notifies: the socket is then drained and would not wake us,
        # leaving them unprocessed until the next NOTIFY or the idle fetch.
        pending = {link.dbname for link in up if link.conn.notifies}
        if pending:
            timeout = 0.0
        by_fd = {link.conn.fileno(): link.dbname for link in up}
        # A selector, not select.select(): a process with thousands of sockets hands
        # out descriptors above FD_SETSIZE.
        try:
            with selectors.DefaultSelector() as selector:
                for fd in [wake_fd, *by_fd]:
                    selector.register(fd, selectors.EVENT_READ)
                ready = {key.fd for key, _ in selector.select(timeout)}
        except (OSError, ValueError):
            # A connection closed under us: its next use reports the error properly.
            return True, set(by_fd.values())
        return wake_fd in ready, {by_fd[fd] for fd in ready if fd in by_fd} | pending

    def read(self, feed: str) -> list[Wakeup | Control]:
        link = self.links[feed]
        link.conn.poll()
        notifies = list(link.conn.notifies)
        link.conn.notifies.clear()
        events: list[Wakeup | Control] = []
        for notify in notifies:
            if notify.channel == IMBUS:
                events.append(Wakeup(self._announced(feed, notify.payload)))
            elif notify.channel in self._channels:
                events.append(Control(notify.channel, feed, notify.payload))
        return events

    def _announced(self, feed: str, payload: str) -> list[tuple[str, str | None]]:
        try:
            return [(channel[0], bus_channels.encode_channel(channel))
                    for channel in orjson.loads(payload)]
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError, IndexError,
                KeyError):
            # Not the list of anchored channels we expect (another sender, an old
            # format): fetch rather than risk missing something.
            names = self.databases if feed == self.imbus_db_name else [feed]
            return [(name, None) for name in names]

    @contextlib.contextmanager
    def reader(self, database: str) -> Iterator[Reader]:
        with self.links[database].conn.cursor() as cur:
            yield _CursorReader(cur)
