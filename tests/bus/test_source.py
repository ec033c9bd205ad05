"""The dispatcher's source seam (rtbus.bus.source): a second implementation plugs in.

`MemorySource` is a test double of the seam only, an in-memory bus stream with its own
wake-ups; ImDispatch runs unchanged on top of it (catch-up, live fan-out, control
messages, a lost feed). No database here: the PostgreSQL source is tested in
test_dispatch.py and the other tests of this directory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time

import orjson

from rtbus.bus.channels import encode
from rtbus.bus.delivery import START, Replayed, Row
from rtbus.bus.dispatch import ImDispatch
from rtbus.bus.mailbox import Mailbox
from rtbus.bus.source import Control, Source, Wakeup
from waiting import wait_until


class Gone(Exception):
    """The memory source's only error: a feed dropped."""


class MemorySource:
    """Feeds "hub" (announcements) and one per database; rows in a list per database."""

    errors = (Gone,)

    def __init__(self, databases):
        self.databases = list(databases)
        self.rows = {name: [] for name in self.databases}
        self.pending = {name: [] for name in self.databases}   # not yet given an epoch
        self.epoch = {name: 0 for name in self.databases}
        self.open_feeds: set[str] = set()
        self.events: list[tuple[str, Wakeup | Control]] = []
        self.channels: list[str] = []
        self.lock = threading.Lock()
        self.next_id = 0
        self.fail_next_read = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    # -- the test's side: publish and announce -----------------------------------------

    def publish(self, dbname, channel, payload):
        with self.lock:
            self.next_id += 1
            encoded = encode(dbname, channel)
            self.pending[dbname].append((self.next_id, encoded, orjson.dumps(
                {"type": "t", "payload": payload}).decode()))
            self.events.append(("hub", Wakeup([(dbname, encoded)])))
        os.write(self._w, b"x")
        return self.next_id

    def control(self, dbname, channel, payload):
        with self.lock:
            self.events.append((dbname, Control(channel, dbname, payload)))
        os.write(self._w, b"x")

    # -- the Source protocol ---------------------------------------------------------------

    @property
    def feeds(self):
        return ["hub", *self.databases]

    def listen(self, channel):
        self.channels.append(channel)

    def up(self, feed):
        return feed in self.open_feeds

    def open(self, feed, read_epoch, backlog):
        self.open_feeds.add(feed)
        if feed in self.databases and read_epoch:
            return self._record(feed)
        return None

    def close(self, feed):
        self.open_feeds.discard(feed)

    def lost(self, exc, feed):
        return True

    def wait(self, timeout, wake_fd):
        with selectors.DefaultSelector() as selector:
            selector.register(wake_fd, selectors.EVENT_READ)
            selector.register(self._r, selectors.EVENT_READ)
            ready = {key.fd for key, _ in selector.select(timeout)}
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        with self.lock:
            feeds = {feed for feed, _ in self.events if feed in self.open_feeds}
        return wake_fd in ready, feeds

    def read(self, feed):
        if self.fail_next_read:
            self.fail_next_read = False
            raise Gone(feed)
        with self.lock:
            mine = [event for f, event in self.events if f == feed]
            self.events = [(f, event) for f, event in self.events if f != feed]
        return mine

    @contextlib.contextmanager
    def reader(self, database):
        yield _Reader(self, database)

    def _record(self, dbname):
        """A new epoch: the rows published since the last one get it."""
        with self.lock:
            self.epoch[dbname] += 1
            epoch = self.epoch[dbname]
            for row_id, channel, message in self.pending[dbname]:
                self.rows[dbname].append(Row(epoch, row_id, channel, message))
            self.pending[dbname].clear()
            return epoch


class _Reader:
    def __init__(self, source, dbname):
        self.source, self.dbname = source, dbname

    def next(self, after, backlog, where=""):
        epoch = self.source._record(self.dbname)
        rows = [] if after is None else [r for r in self.source.rows[self.dbname]
                                         if r.epoch > after]
        return epoch, rows, False

    def replay(self, catchup, epoch, channels, backlog, limit, where=""):
        rows = self.source.rows[self.dbname]
        position = catchup.position
        if position is None:
            position = next((r.position for r in rows if r.id == catchup.last), START)
        body = [r for r in rows if r.position > position and r.epoch <= epoch
                and r.channel in channels][:limit]
        end = body[-1].position if body else None
        return Replayed(position, catchup.window, body, end, len(body) < limit)


def _payloads(mailbox, count, timeout=5.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        batch = mailbox.get(max(0.0, deadline - time.monotonic()))
        if batch is None:
            break
        got.extend(n["message"]["payload"] for n in orjson.loads(batch))
    return got


def test_a_second_source_plugs_into_the_dispatcher():
    source: Source = MemorySource(["db1"])      # structural: no base class to inherit
    controls = []
    dispatch = ImDispatch(None, ["db1"], source=source, idle_fetch_seconds=30.0)
    dispatch.listen("ctl", lambda dbname, payload: controls.append((dbname, payload)))
    assert dispatch.start(wait=5)
    try:
        assert controls == [("db1", "*")]          # a feed (re)opened: messages missed
        before = source.publish("db1", "ch", "before")
        mailbox = Mailbox(1 << 20)
        dispatch.subscribe("s", "db1", [encode("db1", "ch")], before - 1, mailbox)
        assert dispatch.wait_applied(5)
        assert _payloads(mailbox, 1) == ["before"]                 # the catch-up
        source.publish("db1", "other", "not for s")
        source.publish("db1", "ch", "live 1")
        source.publish("db1", "ch", "live 2")
        assert _payloads(mailbox, 2) == ["live 1", "live 2"]       # the live fan-out
        source.control("db1", "ctl", "revoke 7")
        wait_until(lambda: ("db1", "revoke 7") in controls, timeout=5)
        stats = dispatch.stats()
        assert stats["notifies"] >= 3 and stats["deliveries"] == 3

        # A feed lost: the dispatcher closes it, reconnects with backoff, fetches again.
        source.fail_next_read = True
        source.publish("db1", "ch", "after the outage")
        assert _payloads(mailbox, 1) == ["after the outage"]
        wait_until(lambda: dispatch.stats()["listen_reconnects"] == 1, timeout=5)
        assert source.open_feeds == {"hub", "db1"}
    finally:
        assert dispatch.stop(5)
    assert source.open_feeds == set()
