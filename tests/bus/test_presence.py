"""Presence against a real PostgreSQL: Odoo's status rules, notifications only on change and
only on commit, throttling and coalescing, GC, missed presences, and 200 concurrent updaters
without a single error in Python or in PostgreSQL's log."""

from __future__ import annotations

import random
import re
import threading
import time

import orjson
import pytest

from rtbus.bus.authorization import ChannelPolicy, SubscribeContext, authorize
from rtbus.bus.presence import (AWAY_TIMER, IM_STATUS_UPDATED, PresenceService, check_inactivity,
                                gc_presences, missed_presences, push_missed_presences,
                                status_for, write_presence)
from rtbus.bus.publish import publishing
from rtbus.config import Config
from rtbus.db.pool import ConnectionPool
from rtbus.session import Session
from waiting import wait_until

AWAY_MS = AWAY_TIMER * 1000


@pytest.fixture
def pool(pg_cluster):
    kwargs = pg_cluster.connect_kwargs()
    del kwargs["dbname"]
    p = ConnectionPool("test-presence", 4, kwargs, timeout=10)
    yield p
    p.close_all()


@pytest.fixture
def service(pool, notifier):
    return PresenceService(pool, update_interval=60, notifier=notifier)


def user(db, uid=2, partner_id=7) -> Session:
    return Session(sid="s" * 64, dbname=db, uid=uid, partner_id=partner_id, group_ids=())


def presence_notes(conn, db, partner_id=None) -> list[tuple[list, dict]]:
    """(channel, payload) of every im_status_updated row, in order."""
    rows = []
    with conn.cursor() as cur:
        cur.execute("SELECT channel, message FROM bus_bus ORDER BY id")
        for channel, message in cur.fetchall():
            message = orjson.loads(message)
            if message["type"] == IM_STATUS_UPDATED:
                rows.append((orjson.loads(channel), message["payload"]))
    conn.rollback()
    return rows


def statuses(conn, db, partner_id=7) -> list[str]:
    return [payload["im_status"] for channel, payload in presence_notes(conn, db)
            if payload["partner_id"] == partner_id]


def presence_row(conn, uid=2):
    with conn.cursor() as cur:
        cur.execute("SELECT status, partner_id, xmin::text, last_poll, last_presence"
                    " FROM rtbus_presence WHERE user_id = %s", (uid,))
        row = cur.fetchone()
    conn.rollback()
    return row


def age(conn, seconds, uid=None):
    with conn.cursor() as cur:
        cur.execute("UPDATE rtbus_presence SET last_poll = last_poll - %s * interval '1 second'"
                    " WHERE %s IS NULL OR user_id = %s", (seconds, uid, uid))
    conn.commit()


# -- pure rules -----------------------------------------------------------------------------------


def test_status_rule():
    assert status_for(0) == "online"
    assert status_for(AWAY_MS) == "online"
    assert status_for(AWAY_MS + 1) == "away"


@pytest.mark.parametrize("value, expected", [(0, 0.0), (1500, 1500.0), (-5, 0.0), (2.5, 2.5),
                                             (10**30, 10 * 365 * 86400 * 1000.0)])
def test_inactivity_is_clamped(value, expected):
    assert check_inactivity(value) == expected


@pytest.mark.parametrize("value", [True, "100", None, [1], float("nan"), float("inf")])
def test_inactivity_must_be_a_number(value):
    with pytest.raises(ValueError):
        check_inactivity(value)


# -- status changes and their notifications -------------------------------------------------------


def test_status_changes_publish_on_the_presence_channel(bus_db, connections, service):
    """Odoo's test_notify_on_status_change: offline -> online -> away -> online, and
    online -> online publishes nothing."""
    conn = connections(bus_db)
    session = user(bus_db)
    assert service.update_presence(session, 0) == "online"
    assert presence_notes(conn, bus_db) == [
        ([bus_db, "res.partner", 7, "presence"],
         {"presence_status": "online", "im_status": "online", "partner_id": 7, "guest_id": None})]
    service.coalesce_seconds = 0
    assert service.update_presence(session, 1000) == "online"
    assert service.update_presence(session, AWAY_MS + 1) == "away"
    assert service.update_presence(session, 0) == "online"
    assert service.set_offline(session) is True
    assert service.set_offline(session) is False
    assert service.update_presence(session, 0) == "online"
    assert statuses(conn, bus_db) == ["online", "away", "online", "offline", "online"]
    message = presence_notes(conn, bus_db)[0]
    assert list(message[1]) == ["presence_status", "im_status", "partner_id", "guest_id"]


def test_last_presence_follows_inactivity_and_never_goes_back(bus_db, connections, service):
    conn = connections(bus_db)
    service.coalesce_seconds = 0
    service.update_presence(user(bus_db), AWAY_MS + 60_000)
    _, _, _, last_poll, last_presence = presence_row(conn)
    assert abs((last_poll - last_presence).total_seconds() - (AWAY_TIMER + 60)) < 1
    service.update_presence(user(bus_db), 0)
    _, _, _, last_poll, last_presence = presence_row(conn)
    assert last_presence == last_poll
    age(conn, 120)
    service.update_presence(user(bus_db), AWAY_MS + 60_000)   # an older report from another tab
    assert presence_row(conn)[4] == last_presence


def test_public_sessions_have_no_presence(bus_db, connections, service):
    public = Session(sid=None, dbname=bus_db, uid=None, partner_id=None, group_ids=())
    assert service.update_presence(public, 0) is None
    assert service.set_offline(public) is False
    assert service.connection_opened(public) == 0
    assert presence_row(connections(bus_db)) is None


def test_user_without_partner_is_recorded_but_not_announced(bus_db, connections, service):
    conn = connections(bus_db)
    service.update_presence(user(bus_db, partner_id=None), 0)
    assert presence_row(conn)[0] == "online"
    assert presence_notes(conn, bus_db) == []


def test_nothing_is_published_when_the_write_rolls_back(bus_db, connections, notifier):
    conn = connections(bus_db)
    with pytest.raises(RuntimeError):
        with publishing(conn, notifier):
            assert write_presence(conn, 2, 7, "online", 0, 60).changed
            raise RuntimeError("the application's transaction fails")
    assert presence_row(conn) is None and presence_notes(conn, bus_db) == []


def test_unknown_status_is_refused(bus_db, connections):
    with pytest.raises(ValueError):
        write_presence(connections(bus_db), 2, 7, "offline", 0, 60)


# -- throttling and coalescing --------------------------------------------------------------------


def test_database_throttles_same_status_writes(bus_db, connections, notifier):
    conn = connections(bus_db)

    def write(status="online", interval=60):
        with publishing(conn, notifier):
            return write_presence(conn, 2, 7, status, 0, interval)

    assert write().written
    xmin = presence_row(conn)[2]
    assert not write().written                       # within the interval: no new row version
    assert presence_row(conn)[2] == xmin
    assert write("away").changed                      # a status change is always written
    age(conn, 61)
    result = write("away")
    assert result.written and not result.changed      # interval passed: refreshed, not announced
    assert statuses(conn, bus_db) == ["online", "away"]
    assert write("away", interval=0).written


def test_service_absorbs_repeated_updates(bus_db, connections, pool, notifier):
    clock = [100.0]
    service = PresenceService(pool, update_interval=60, notifier=notifier, clock=lambda: clock[0])
    session = user(bus_db)
    for _ in range(10):
        service.update_presence(session, 0)
    stats = service.stats()
    assert (stats["updates"], stats["absorbed"], stats["statements"]) == (10, 9, 1)
    clock[0] += PresenceService.COALESCE_SECONDS + 0.1
    service.update_presence(session, 0)               # reaches the database, which throttles
    stats = service.stats()
    assert (stats["statements"], stats["writes"]) == (2, 1)
    service.update_presence(session, AWAY_MS + 1)     # a change is never absorbed
    assert service.stats()["changes"] == 2
    service.connection_opened(session)                # a new connection forgets the memory
    service.update_presence(session, AWAY_MS + 1)
    assert service.stats()["statements"] == 4


def test_coalescing_cannot_hide_an_offline_set_elsewhere(bus_db, connections, pool, notifier):
    """Another process (an HTTP worker serving /websocket/on_closed) sets the user offline:
    the client's next update_presence must bring it back online soon, not a minute later."""
    clock = [100.0]
    gevent_side = PresenceService(pool, update_interval=60, notifier=notifier,
                                  clock=lambda: clock[0])
    http_side = PresenceService(pool, update_interval=60, notifier=notifier)
    conn = connections(bus_db)
    session = user(bus_db)
    gevent_side.update_presence(session, 0)
    http_side.set_offline(session)
    clock[0] += PresenceService.COALESCE_SECONDS + 0.1
    gevent_side.update_presence(session, 0)
    assert presence_row(conn)[0] == "online"
    assert statuses(conn, bus_db) == ["online", "offline", "online"]


def test_last_connection_closing_sets_offline(bus_db, connections, service):
    conn = connections(bus_db)
    session = user(bus_db)
    assert service.connection_opened(session) == 1
    assert service.connection_opened(session) == 2
    service.update_presence(session, 0)
    assert service.connection_closed(session) is False
    assert presence_row(conn)[0] == "online"
    assert service.connection_closed(session) is True
    assert presence_row(conn)[0] == "offline"
    assert service.connections_of(bus_db, 2) == 0
    assert statuses(conn, bus_db) == ["online", "offline"]


def test_a_user_still_connected_to_another_process_comes_back_online(bus_db, connections, pool,
                                                                      notifier, pg_cluster):
    """Tabs on two gevent workers: the last tab closing on one sets the user offline and
    announces it on rtbus_presence; the other, still holding a tab, writes the status back."""
    import select

    from rtbus.bus.presence import PRESENCE_NOTIFY_CHANNEL

    listener = pg_cluster.connect(bus_db)
    listener.autocommit = True
    with listener.cursor() as cur:
        cur.execute(f"LISTEN {PRESENCE_NOTIFY_CHANNEL}")
    first, second = (PresenceService(pool, update_interval=60, notifier=notifier) for _ in range(2))
    session = user(bus_db)
    conn = connections(bus_db)
    for service in (first, second):
        service.connection_opened(session)
        service.update_presence(session, AWAY_MS + 5000)      # both tabs report the user away
    assert first.connection_closed(session) is True
    assert presence_row(conn)[0] == "offline"

    def announced():
        select.select([listener], [], [], 0.2)
        listener.poll()
        return [n.payload for n in listener.notifies if n.channel == PRESENCE_NOTIFY_CHANNEL]

    assert wait_until(announced, 5, message="the rtbus_presence NOTIFY") == ["2"]
    first.on_presence_notify(bus_db, "2")          # no connection of the user there: nothing
    second.on_presence_notify(bus_db, "2")
    wait_until(lambda: presence_row(conn)[0] == "away", 5, message="the presence written back")
    assert statuses(conn, bus_db) == ["away", "offline", "away"]
    assert (first.stats()["reasserted"], second.stats()["reasserted"]) == (0, 1)
    listener.close()


def test_page_reload_does_not_leave_the_user_offline(bus_db, connections, service):
    """The old connection's close and the new connection's first update race: the
    offline write, serialised after the new connection opened, must not happen."""
    conn = connections(bus_db)
    session = user(bus_db)
    service.connection_opened(session)
    service.update_presence(session, 0)
    state = service._users[(bus_db, 2)]
    outcome = []
    with state.write_lock:              # hold the user's writes while the reload happens
        closer = threading.Thread(target=lambda: outcome.append(service.connection_closed(session)))
        closer.start()
        wait_until(lambda: service.connections_of(bus_db, 2) == 0, 5,
                   message="the closing connection to be uncounted")
        service.connection_opened(session)
    closer.join(5)
    assert outcome == [False]
    assert presence_row(conn)[0] == "online"
    assert statuses(conn, bus_db) == ["online"]


def test_service_from_config(pool):
    config = Config.defaults().replace(presence_update_interval=5)
    service = PresenceService.from_config(pool, config)
    assert service.update_interval == 5.0 and service.coalesce_seconds == 2.0
    assert PresenceService(pool, update_interval=0).coalesce_seconds == 0


# -- garbage collection ---------------------------------------------------------------------------


def test_gc_removes_outdated_presences_and_announces_them_offline(bus_db, connections, service,
                                                                  notifier):
    conn = connections(bus_db)
    service.coalesce_seconds = 0
    service.update_presence(user(bus_db, 2, 7), 0)           # outdated, online
    service.update_presence(user(bus_db, 3, 8), 0)           # outdated, already offline
    service.set_offline(user(bus_db, 3, 8))
    service.update_presence(user(bus_db, 4, 9), 0)           # recent
    age(conn, 12 * 3600 + 10, uid=2)
    age(conn, 12 * 3600 + 10, uid=3)
    age(conn, 12 * 3600 - 60, uid=4)
    before = len(presence_notes(conn, bus_db))
    assert gc_presences(conn, notifier, batch_size=1) == 2
    with conn.cursor() as cur:
        cur.execute("SELECT user_id FROM rtbus_presence")
        assert cur.fetchall() == [(4,)]
    conn.rollback()
    assert [p for _, p in presence_notes(conn, bus_db)[before:]] == [
        {"presence_status": "offline", "im_status": "offline", "partner_id": 7, "guest_id": None}]
    assert gc_presences(conn, notifier) == 0


# -- missed presences ----------------------------------------------------------------------------


def test_missed_presences(bus_db, connections, service):
    conn = connections(bus_db)
    service.update_presence(user(bus_db, 2, 7), 0)
    service.update_presence(user(bus_db, 3, 8), AWAY_MS + 1)
    service.update_presence(user(bus_db, 4, 9), 0)
    service.update_presence(user(bus_db, 5, 8), 0)        # a second user of partner 8
    age(conn, 10, uid=4)
    assert missed_presences(conn, [7, 8, 9, 10]) == [
        {"presence_status": "online", "im_status": "online", "partner_id": 7, "guest_id": None},
        {"presence_status": "online", "im_status": "online", "partner_id": 8, "guest_id": None}]
    assert missed_presences(conn, [9], since_seconds=60)[0]["partner_id"] == 9
    assert missed_presences(conn, []) == []


def test_missed_presences_are_pushed_after_subscribe(bus_db, connections, pool, service, notifier):
    """Odoo's test_receive_missed_presences_on_subscribe, through the after-subscribe hook."""
    conn = connections(bus_db)
    service.update_presence(user(bus_db, 3, 8), 0)
    subscriber = user(bus_db, 2, 7)
    subscription = authorize(subscriber, ["odoo-presence-res.partner_8",
                                          "odoo-presence-res.partner_9"], ChannelPolicy())
    context = SubscribeContext(pool=pool, transport="websocket", notifier=notifier)
    assert push_missed_presences(subscriber, subscription, context) == 1
    assert presence_notes(conn, bus_db)[-1] == (
        [bus_db, "res.partner", 7],
        {"presence_status": "online", "im_status": "online", "partner_id": 8, "guest_id": None})
    public = Session(sid=None, dbname=bus_db, uid=None, partner_id=None, group_ids=())
    assert push_missed_presences(public, authorize(public, [], ChannelPolicy()), context) == 0


# -- 200 concurrent updaters ---------------------------------------------------------------------


def _log_errors(path, offset) -> list[str]:
    with open(path, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", "replace")
    return [line for line in text.splitlines()
            if re.search(r"\b(ERROR|FATAL|PANIC)\b|deadlock|could not serialize", line)]


@pytest.mark.timeout(120)
def test_200_concurrent_updaters_raise_nothing(pg_cluster, bus_db, connections, notifier):
    """Same and different users, several 'processes' (services), status flips, offline
    writes, the GC, all at once, on connections whose default isolation is SERIALIZABLE:
    no error in Python, no ERROR in PostgreSQL's log."""
    log_offset = pg_cluster.log_path.stat().st_size
    kwargs = pg_cluster.connect_kwargs()
    del kwargs["dbname"]
    kwargs["options"] = "-c default_transaction_isolation=serializable"
    pool = ConnectionPool("test-presence-200", 24, kwargs, timeout=60)
    # Three processes: one that writes on every call, two that coalesce as in production.
    services = [PresenceService(pool, update_interval=0, notifier=notifier),
                PresenceService(pool, update_interval=60, notifier=notifier),
                PresenceService(pool, update_interval=1, notifier=notifier)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(200)

    def updater(index: int):
        rng = random.Random(index)
        uid = 1000 + index if index % 4 == 0 else 1 + index % 10    # 10 hot users
        session = user(bus_db, uid, 5000 + uid)
        service = services[index % 3]
        try:
            barrier.wait(30)
            service.connection_opened(session)
            for step in range(6):
                roll = rng.random()
                if roll < 0.15:
                    service.set_offline(session)
                else:
                    service.update_presence(session, 0 if roll < 0.6 else AWAY_MS + 1)
            if index % 50 == 0:
                with pool.connection(bus_db) as conn:
                    gc_presences(conn, notifier)
            service.connection_closed(session)
        except BaseException as exc:     # noqa: BLE001 - every error is a failure here
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=updater, args=(i,)) for i in range(200)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        pool.close_all()
    elapsed = time.monotonic() - started
    assert errors == [], errors[:3]
    assert _log_errors(pg_cluster.log_path, log_offset) == []
    # Every status the table ends with was announced last for that partner.
    conn = connections(bus_db)
    with conn.cursor() as cur:
        cur.execute("SELECT partner_id, status FROM rtbus_presence")
        final = dict(cur.fetchall())
    conn.rollback()
    last_announced = {}
    for channel, payload in presence_notes(conn, bus_db):
        last_announced[payload["partner_id"]] = payload["im_status"]
    assert final == {pid: last_announced[pid] for pid in final}
    assert len(final) == 10 + 50
    stats = [s.stats() for s in services]
    assert sum(s["updates"] for s in stats) > 0
    print(f"200 updaters in {elapsed:.2f} s; {stats}")
