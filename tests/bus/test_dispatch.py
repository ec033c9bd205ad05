"""ImDispatch against a real PostgreSQL: delivery guarantees, fan-out cost, outages."""

from __future__ import annotations

import logging
import random
import threading
import time

import orjson
import psycopg2.extensions
import pytest

from rtbus.bus.channels import InvalidChannel, encode
from rtbus.bus.dispatch import ImDispatch
from rtbus.bus.mailbox import Mailbox
from rtbus.bus.publish import Publisher
from rtbus.db import schema
from waiting import wait_until


class Inbox:
    """A subscriber's mailbox plus what the test has read from it."""

    def __init__(self, max_bytes: int = 4 << 20):
        self.mailbox = Mailbox(max_bytes)
        self.received: list[dict] = []
        self.batches = 0

    def _take(self, timeout: float) -> bool:
        batch = self.mailbox.get(timeout)
        if batch is None:
            return False
        notifications = orjson.loads(batch)
        ids = [n["id"] for n in notifications]
        # Stream order is (epoch, id): a late commit comes after higher ids.
        assert len(set(ids)) == len(ids), f"a notification twice in a batch: {ids}"
        self.received.extend(notifications)
        self.batches += 1
        return True

    def wait(self, count: int, timeout: float = 5.0) -> list[dict]:
        """Read until `count` notifications in all arrived (or timeout); return them all."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            self._take(max(0.0, deadline - time.monotonic()))
        return self.received

    def settle(self, quiet: float = 0.3) -> list[dict]:
        """Read until nothing arrives for `quiet` seconds; return everything received."""
        while self._take(quiet):
            pass
        return self.received

    @property
    def ids(self) -> list[int]:
        return [n["id"] for n in self.received]

    @property
    def payloads(self) -> list:
        return [n["message"]["payload"] for n in self.received]


def _upgrade(cluster, dbname):
    conn = cluster.connect(dbname)
    try:
        schema.upgrade(conn)
    finally:
        conn.close()


@pytest.fixture
def make_dispatch(pg_cluster):
    """Factory: make_dispatch(databases, cluster=pg_cluster, **kw) -> a started ImDispatch."""
    started = []

    def make(databases, cluster=None, **kwargs) -> ImDispatch:
        cluster = cluster or pg_cluster

        def connect_kwargs(dbname):
            return cluster.connect_kwargs(dbname)

        dispatch = ImDispatch(connect_kwargs, databases, **kwargs)
        started.append(dispatch)
        assert dispatch.start(wait=10)
        return dispatch

    yield make
    for dispatch in started:
        assert dispatch.stop(5)


@pytest.fixture
def publisher(notifier):
    return Publisher(notifier)


def publish(publisher, conn, dbname, *notifications) -> list[int]:
    return publisher.publish(conn, dbname, list(notifications))


def sync(dispatch, timeout=5.0):
    """Wait until the dispatcher applied the subscriptions made so far."""
    assert dispatch.wait_applied(timeout), "dispatcher did not process its requests"


def heard(dispatch, notifies: int) -> None:
    """Wait until the dispatcher heard `notifies` imbus NOTIFYs and ended that round."""
    wait_until(lambda: dispatch.stats()["notifies"] >= notifies, 5, message=f"{notifies} NOTIFY heard")
    dispatch.unsubscribe(object())      # a no-op request, applied at the end of a round
    sync(dispatch)


# -- live delivery ---------------------------------------------------------------------------

def test_live_delivery_exactly_once_in_order_to_the_right_subscribers(
        bus_db, connections, make_dispatch, publisher):
    dispatch = make_dispatch([bus_db])
    conn = connections(bus_db)
    everyone, partner7, typing = Inbox(), Inbox(), Inbox()
    bc, p7, p7t = (encode(bus_db, c) for c in ("broadcast", ("res.partner", 7),
                                                ("res.partner", 7, "typing")))
    dispatch.subscribe("all", bus_db, [bc, p7, p7t], 0, everyone.mailbox)
    dispatch.subscribe("p7", bus_db, [p7], 0, partner7.mailbox)
    dispatch.subscribe("typing", bus_db, [p7t], 0, typing.mailbox)
    sync(dispatch)
    ids = publish(publisher, conn, bus_db, ("broadcast", "t", 1), (("res.partner", 7), "t", 2),
                  (("res.partner", 8), "t", 3))
    ids += publish(publisher, conn, bus_db, (("res.partner", 7, "typing"), "t", 4))
    ids += publish(publisher, conn, bus_db, (("res.partner", 7), "t", 5))
    assert [n["id"] for n in everyone.wait(4)] == [ids[0], ids[1], ids[3], ids[4]]
    assert everyone.received[0]["message"] == {"type": "t", "payload": 1}
    assert partner7.wait(2) and partner7.payloads == [2, 5]
    assert typing.wait(1) and typing.payloads == [4]
    for inbox, count in ((everyone, 4), (partner7, 2), (typing, 1)):
        assert len(inbox.settle()) == count


def test_one_query_and_one_encoding_per_wakeup_whatever_the_subscribers(
        bus_db, connections, make_dispatch, publisher):
    dispatch = make_dispatch([bus_db])
    inboxes = [Inbox() for _ in range(300)]
    bc = encode(bus_db, "broadcast")
    for i, inbox in enumerate(inboxes):
        dispatch.subscribe(i, bus_db, [bc], 0, inbox.mailbox)
    sync(dispatch)
    before = dispatch.stats()
    publish(publisher, connections(bus_db), bus_db, ("broadcast", "t", "hello"))
    for inbox in inboxes:
        assert inbox.wait(1)[0]["message"]["payload"] == "hello"
    after = dispatch.stats()
    assert after["live_queries"] - before["live_queries"] == 1
    assert after["catchup_queries"] == before["catchup_queries"]
    assert after["batches_encoded"] - before["batches_encoded"] == 1
    assert after["deliveries"] - before["deliveries"] == 300
    assert after["subscribers"] == 300 and after["channels"] == 1
    assert after["listen_connections"] == 2        # postgres + the served database


def test_notifications_for_channels_nobody_here_listens_to_cost_no_query(
        bus_db, connections, make_dispatch, publisher):
    dispatch = make_dispatch([bus_db], idle_fetch_seconds=60)
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "mine")], 0, inbox.mailbox)
    sync(dispatch)
    before = dispatch.stats()["live_queries"]
    conn = connections(bus_db)
    publish(publisher, conn, bus_db, ("someone-else", "t", 1))
    heard(dispatch, 1)
    assert dispatch.stats()["live_queries"] == before
    publish(publisher, conn, bus_db, ("mine", "t", 2))
    assert inbox.wait(1) and inbox.payloads == [2]
    assert inbox.settle() and inbox.payloads == [2]


def test_plain_sql_notification_is_delivered(bus_db, connections, make_dispatch):
    dispatch = make_dispatch([bus_db])
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    app = connections(bus_db)
    with app.cursor() as cur:
        cur.execute("INSERT INTO bus_bus (channel, message) VALUES (%s, %s)",
                    (f'["{bus_db}","broadcast"]', '{"type":"plain","payload":{"sql":true}}'))
    app.commit()
    imbus = connections("postgres", autocommit=True)
    with imbus.cursor() as cur:
        # As written by hand, with spaces: still understood.
        cur.execute("SELECT pg_notify('imbus', %s)", (f'[["{bus_db}", "broadcast"]]',))
    assert inbox.wait(1)[0]["message"] == {"type": "plain", "payload": {"sql": True}}


def test_sql_function_publisher_in_its_own_database_is_heard(bus_db, connections, make_dispatch):
    dispatch = make_dispatch([bus_db])
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, ("res.partner", 7))], 0, inbox.mailbox)
    sync(dispatch)
    app = connections(bus_db)
    with app.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('["res.partner", 7]', 'sql', '{"n": 1}')""")
    other = connections(bus_db)                      # its commit wakes a fetch meanwhile
    with other.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('["res.partner", 7]', 'sql', '{"n": 0}')""")
    other.commit()
    assert inbox.wait(1) and inbox.payloads == [{"n": 0}]     # not before commit
    app.commit()
    assert inbox.wait(2)[1]["message"] == {"type": "sql", "payload": {"n": 1}}


def test_out_of_order_commits_are_delivered(bus_db, connections, make_dispatch):
    dispatch = make_dispatch([bus_db])
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    slow, fast = connections(bus_db), connections(bus_db)
    with slow.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '"slow"')""")
        slow_id = cur.fetchone()[0]
    with fast.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '"fast"')""")
        fast_id = cur.fetchone()[0]
    assert slow_id < fast_id
    fast.commit()
    assert inbox.wait(1) and inbox.ids == [fast_id]
    slow.commit()                                   # the lower id commits after the higher one
    assert inbox.wait(2) and inbox.ids == [fast_id, slow_id]
    assert inbox.settle() and inbox.ids == [fast_id, slow_id]


def test_a_rolled_back_id_is_no_hole(bus_db, connections, make_dispatch):
    dispatch = make_dispatch([bus_db], idle_fetch_seconds=0.1)
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    app = connections(bus_db)
    with app.cursor() as cur:       # an id consumed and rolled back: a permanent hole
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '1')""")
    app.rollback()
    with app.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '2')""")
    app.commit()
    assert inbox.wait(1)
    with app.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '3')""")
    app.commit()
    assert inbox.wait(2) and inbox.payloads == [2, 3]
    assert inbox.settle() and inbox.payloads == [2, 3]


def test_idle_fetch_delivers_a_row_whose_notify_was_lost(bus_db, connections, make_dispatch):
    dispatch = make_dispatch([bus_db], idle_fetch_seconds=0.3)
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    app = connections(bus_db)
    with app.cursor() as cur:
        cur.execute("INSERT INTO bus_bus (channel, message) VALUES (%s, %s)",
                    (encode(bus_db, "broadcast"), '{"type":"t","payload":"no notify"}'))
    app.commit()
    assert inbox.wait(1, timeout=3) and inbox.payloads == ["no notify"]


def test_notify_buffered_by_libpq_during_a_query_is_not_left_waiting(bus_db, connections,
                                                                    make_dispatch):
    # A NOTIFY that arrives while the dispatcher's own fetch runs on the same
    # connection is read by libpq into conn.notifies: the socket is drained, so
    # select() alone would sleep until the idle fetch (here 60 s). Recreate that
    # state: a committed row, its NOTIFY already buffered, the socket silent.
    dispatch = make_dispatch([bus_db], idle_fetch_seconds=60)
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    app = connections(bus_db)
    with app.cursor() as cur:
        cur.execute("INSERT INTO bus_bus (channel, message) VALUES (%s, %s)",
                    (encode(bus_db, "broadcast"), '{"type":"t","payload":"buffered"}'))
    app.commit()
    link_conn = dispatch._source.links[bus_db].conn
    link_conn.notifies.append(psycopg2.extensions.Notify(0, "imbus", f'[["{bus_db}","broadcast"]]'))
    dispatch.unsubscribe("nobody")      # wakes the loop without starting a fetch cycle
    assert inbox.wait(1, timeout=3) and inbox.payloads == ["buffered"]


# -- subscribe and `last` --------------------------------------------------------------------------

def test_last_gets_everything_after_it_on_its_channels(bus_db, connections, make_dispatch,
                                                       publisher):
    conn = connections(bus_db)
    ids = [publish(publisher, conn, bus_db, (ch, "t", i))[0]
           for i, ch in enumerate(["a", "b", "a", "a", "b"])]
    dispatch = make_dispatch([bus_db])
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "a")], ids[0], inbox.mailbox)
    assert inbox.wait(2) and inbox.ids == [ids[2], ids[3]]
    assert inbox.batches == 1
    assert inbox.settle() and inbox.ids == [ids[2], ids[3]]


def test_last_above_the_max_id_counts_as_zero(bus_db, connections, make_dispatch, publisher):
    conn = connections(bus_db)
    ids = publish(publisher, conn, bus_db, ("a", "t", 1), ("a", "t", 2))
    dispatch = make_dispatch([bus_db])
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "a")], ids[-1] + 1000, inbox.mailbox)
    assert inbox.wait(2) and inbox.ids == ids


def test_last_zero_replays_the_last_50_seconds(bus_db, connections, make_dispatch, publisher):
    conn = connections(bus_db)
    old, recent = publish(publisher, conn, bus_db, ("a", "t", "old"), ("a", "t", "recent"))
    with conn.cursor() as cur:
        cur.execute("UPDATE bus_bus SET create_date = create_date - interval '51 seconds'"
                    " WHERE id = %s", (old,))
    conn.commit()
    dispatch = make_dispatch([bus_db])
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "a")], 0, inbox.mailbox)
    assert inbox.settle() and inbox.ids == [recent]


def test_last_zero_skips_an_old_row_the_live_read_of_the_same_cycle_finds(
        bus_db, connections, make_dispatch, publisher):
    dispatch = make_dispatch([bus_db])
    conn = connections(bus_db)
    with conn.cursor() as cur:       # committed without NOTIFY, stamped two minutes ago
        cur.execute("INSERT INTO bus_bus (channel, message, create_date) VALUES"
                    " (%s, '{\"type\":\"t\",\"payload\":\"old\"}',"
                    " (now() at time zone 'utc') - interval '120 seconds')", (encode(bus_db, "a"),))
    conn.commit()
    inbox = Inbox()
    dispatch.subscribe("s", bus_db, [encode(bus_db, "a")], 0, inbox.mailbox)
    (recent,) = publish(publisher, conn, bus_db, ("a", "t", "recent"))
    assert inbox.wait(1) and inbox.settle() and inbox.ids == [recent]


def test_last_is_adopted_once_and_resubscribe_replaces_channels(bus_db, connections,
                                                                make_dispatch, publisher):
    conn = connections(bus_db)
    dispatch = make_dispatch([bus_db])
    first = publish(publisher, conn, bus_db, ("a", "t", "before"))[0]
    inbox = Inbox()
    a, b = encode(bus_db, "a"), encode(bus_db, "b")
    dispatch.subscribe("s", bus_db, [a], first, inbox.mailbox)       # nothing after `first`
    sync(dispatch)
    on_a = publish(publisher, conn, bus_db, ("a", "t", "on a"))[0]
    assert inbox.wait(1) and inbox.ids == [on_a]
    on_b = publish(publisher, conn, bus_db, ("b", "t", "on b"))[0]
    # Adding b catches up on it from what was delivered; `last=0` here is ignored.
    dispatch.subscribe("s", bus_db, [a, b], 0, inbox.mailbox)
    assert inbox.wait(2) and inbox.ids == [on_a, on_b]
    dispatch.subscribe("s", bus_db, [b], 0, inbox.mailbox)           # drop a
    sync(dispatch)
    publish(publisher, conn, bus_db, ("a", "t", "gone"))
    last_b = publish(publisher, conn, bus_db, ("b", "t", "still"))[0]
    assert inbox.wait(3) and inbox.ids == [on_a, on_b, last_b]
    assert inbox.settle() and len(inbox.ids) == 3
    dispatch.unsubscribe("s")
    sync(dispatch)
    publish(publisher, conn, bus_db, ("b", "t", "after unsubscribe"))
    assert inbox.settle() and len(inbox.ids) == 3
    assert dispatch.stats()["subscribers"] == 0


def test_catch_up_racing_live_delivery_has_no_duplicate_and_no_loss(
        bus_db, connections, make_dispatch, notifier):
    """Subscribers arrive with various `last` while a publisher commits continuously."""
    dispatch = make_dispatch([bus_db])
    channel = encode(bus_db, "race")
    stop = threading.Event()
    published: list[int] = []

    def publish_loop():
        conn = connections(bus_db)
        pub = Publisher(notifier)
        while not stop.is_set():
            published.extend(pub.publish(conn, bus_db, [("race", "t", len(published))]))

    thread = threading.Thread(target=publish_loop)
    thread.start()
    inboxes = []
    try:
        rng = random.Random(7)
        for i in range(30):
            wait_until(lambda n=len(published): len(published) > n, 5, message="another publish")
            last = published[rng.randrange(len(published))] if published else 0
            inbox = Inbox()
            inboxes.append((last, inbox))
            dispatch.subscribe(i, bus_db, [channel], last, inbox.mailbox)
        sync(dispatch)                   # every catch-up delivered, with publishes going on
        wait_until(lambda n=len(published): len(published) > n + 10, 5, message="live publishes")
    finally:
        stop.set()
        thread.join(10)
    # Published after everything else: a duplicate would be in a mailbox before it.
    (marker,) = Publisher(notifier).publish(connections(bus_db), bus_db, [("race", "t", "end")])
    for last, inbox in inboxes:
        inbox.wait(len([i for i in published if i > last]) + 1)
        while inbox._take(0):
            pass
        assert inbox.ids == [i for i in published if i > last] + [marker], f"last={last}"


def test_nothing_crosses_databases(pg_cluster, bus_db, connections, make_dispatch, publisher):
    from pgcluster import unique_name
    other = unique_name()
    pg_cluster.create_database(other, template="template0")
    try:
        _upgrade(pg_cluster, other)
        dispatch = make_dispatch([bus_db, other])
        mine, theirs = Inbox(), Inbox()
        dispatch.subscribe("mine", bus_db, [encode(bus_db, "broadcast")], 0, mine.mailbox)
        dispatch.subscribe("theirs", other, [encode(other, "broadcast")], 0, theirs.mailbox)
        with pytest.raises(InvalidChannel):
            dispatch.subscribe("x", bus_db, [encode(other, "broadcast")], 0, Mailbox(10))
        with pytest.raises(ValueError, match="not served"):
            dispatch.subscribe("x", "nope", [encode("nope", "broadcast")], 0, Mailbox(10))
        sync(dispatch)
        publish(publisher, connections(bus_db), bus_db, ("broadcast", "t", "for mine"))
        publish(publisher, connections(other), other, ("broadcast", "t", "for theirs"))
        assert mine.wait(1) and theirs.wait(1)
        assert mine.settle() and mine.payloads == ["for mine"]
        assert theirs.settle() and theirs.payloads == ["for theirs"]
        assert dispatch.stats()["listen_connections"] == 3
        dispatch.stop()
    finally:
        pg_cluster.drop_database(other)


def test_a_slow_consumer_overflows_without_blocking_the_others(bus_db, connections,
                                                               make_dispatch, publisher):
    dispatch = make_dispatch([bus_db])
    overflowed = []
    slow = Mailbox(300, on_overflow=overflowed.append)
    fast = Inbox()
    bc = encode(bus_db, "broadcast")
    dispatch.subscribe("slow", bus_db, [bc], 0, slow)
    dispatch.subscribe("fast", bus_db, [bc], 0, fast.mailbox)
    sync(dispatch)
    conn = connections(bus_db)
    for i in range(10):
        publish(publisher, conn, bus_db, ("broadcast", "t", "x" * 50))
        assert fast.wait(i + 1)
    assert overflowed == [slow] and slow.overflowed
    assert len(fast.settle()) == 10
    assert dispatch.stats()["overflows"] == 1


# -- outages ------------------------------------------------------------------------------------------

@pytest.fixture
def crash_db(crash_cluster):
    from pgcluster import unique_name
    name = unique_name()
    crash_cluster.create_database(name, template="template0")
    _upgrade(crash_cluster, name)
    yield name
    crash_cluster.drop_database(name)


def _terminate_listeners(cluster):
    conn = cluster.connect("postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'rtbus-imdispatch'")
        killed = cur.fetchone()[0]
    conn.close()
    return killed


def _publish_fresh(cluster, dbname, payload, notifier):
    conn = cluster.connect(dbname)
    try:
        return Publisher(notifier).publish(conn, dbname, [("broadcast", "t", payload)])[0]
    finally:
        conn.close()


def _wait_restored(dispatch, timeout=10):
    wait_until(lambda: not dispatch.stats()["outage"] and dispatch.stats()["listen_connections"] == 2,
               timeout, message="the dispatcher to reconnect")


def test_terminated_listen_connections_reconnect_fast_and_catch_up(
        crash_cluster, crash_db, make_dispatch, caplog):
    dispatch = make_dispatch([crash_db], cluster=crash_cluster, backoff_first=0.8)
    inbox = Inbox()
    dispatch.subscribe("s", crash_db, [encode(crash_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    caplog.set_level(logging.INFO, logger="rtbus.bus.dispatch")
    from rtbus.bus.publish import Notifier
    notifier = Notifier("postgres")
    try:
        assert _terminate_listeners(crash_cluster) == 2
        # Published while the dispatcher is deaf (its first retry is 0.4-0.8 s away).
        during = _publish_fresh(crash_cluster, crash_db, "during", notifier)
        _wait_restored(dispatch)
        after = _publish_fresh(crash_cluster, crash_db, "after", notifier)
        assert inbox.wait(2) and inbox.ids == [during, after]
        assert inbox.settle() and len(inbox.ids) == 2
    finally:
        notifier.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    restored = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    assert len(warnings) == 1 and "lost" in warnings[0].getMessage()
    assert len(restored) == 1 and "attempts" in restored[0]
    assert dispatch.stats()["listen_reconnects"] == 1


def test_postgresql_restart_loses_nothing(crash_cluster, crash_db, make_dispatch, caplog):
    dispatch = make_dispatch([crash_db], cluster=crash_cluster, backoff_first=0.3)
    inbox = Inbox()
    dispatch.subscribe("s", crash_db, [encode(crash_db, "broadcast")], 0, inbox.mailbox)
    sync(dispatch)
    caplog.set_level(logging.INFO, logger="rtbus.bus.dispatch")
    from rtbus.bus.publish import Notifier
    notifier = Notifier("postgres")
    try:
        before = _publish_fresh(crash_cluster, crash_db, "before", notifier)
        assert inbox.wait(1)
        crash_cluster.restart()
        # Right after the restart: the dispatcher may well not be listening yet.
        during = _publish_fresh(crash_cluster, crash_db, "during", notifier)
        _wait_restored(dispatch)
        after = _publish_fresh(crash_cluster, crash_db, "after", notifier)
        assert inbox.wait(3) and inbox.ids == [before, during, after]
        assert inbox.settle() and len(inbox.ids) == 3
    finally:
        notifier.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert sum("restored" in r.getMessage() for r in caplog.records) == 1
