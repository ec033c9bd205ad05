"""Session changes reach every process's cache through NOTIFY rtbus_session (migration 0004)."""

from __future__ import annotations

import threading

from rtbus.config import Config
from rtbus.bus.dispatch import ImDispatch
from rtbus.db.pool import ConnectionPool
from rtbus.session import (NOTIFY_CHANNEL, SID_PREFIX_LENGTH, SessionStore, create_session,
                           revoke_session, rotate_session, set_groups)
from serverproc import wait_until


def test_changes_notify_a_sid_prefix_and_the_cache_forgets_it(pg_cluster, schema_db):
    received: list[tuple[str, str]] = []
    seen = threading.Event()

    def on_notify(dbname, payload):
        received.append((dbname, payload))
        seen.set()

    dispatcher = ImDispatch(lambda db: pg_cluster.connect_kwargs(db), [schema_db])
    dispatcher.listen(NOTIFY_CHANNEL, on_notify)
    pool = ConnectionPool("test", 2, {k: v for k, v in pg_cluster.connect_kwargs().items() if k != "dbname"})
    store = SessionStore(pool, Config.defaults().replace(session_check_cache_seconds=60))
    conn = pg_cluster.connect(schema_db)
    try:
        assert dispatcher.start(wait=10)
        wait_until(lambda: (schema_db, "*") in received, 5, message="the reconnect invalidation")
        received.clear()
        sid = create_session(conn, 1, 10, [])
        conn.commit()
        assert store.get(schema_db, sid) is not None          # now cached for 60 s
        revoke_session(conn, sid)
        conn.commit()
        wait_until(lambda: received, 5, message="NOTIFY rtbus_session")
        assert received == [(schema_db, sid[:SID_PREFIX_LENGTH])]
        assert len(received[0][1]) == SID_PREFIX_LENGTH < len(sid)    # never the whole credential
        # Still cached: only the notification makes the revocation visible.
        assert store.get(schema_db, sid) is not None
        store.on_session_notify(*received[0])
        assert store.get(schema_db, sid) is None
        received.clear()
        other = create_session(conn, 2, 20, [])
        conn.commit()
        rotate_session(conn, other)
        set_groups(conn, {5: ("Managers", [])})
        conn.commit()
        wait_until(lambda: len(received) >= 2, 5, message="rotation and group notifications")
        assert (schema_db, other[:SID_PREFIX_LENGTH]) in received
        assert (schema_db, "*") in received
    finally:
        dispatcher.stop()
        conn.close()
        pool.close_all()


def _notifications(listener, until_count: int, timeout: float = 5.0) -> list[str]:
    """Payloads received on `listener` until `until_count` arrived (or `timeout`)."""
    import select
    import time

    payloads: list[str] = []
    deadline = time.monotonic() + timeout
    while len(payloads) < until_count and time.monotonic() < deadline:
        if select.select([listener], [], [], max(deadline - time.monotonic(), 0))[0]:
            listener.poll()
            payloads += [n.payload for n in listener.notifies]
            listener.notifies.clear()
    return payloads


def test_expired_sessions_deleted_by_the_gc_stay_silent(pg_cluster, schema_db):
    conn = pg_cluster.connect(schema_db)
    listener = pg_cluster.connect(schema_db)
    listener.autocommit = True
    try:
        with listener.cursor() as cr:
            cr.execute("LISTEN rtbus_session")
        sid = create_session(conn, 3, 30, [])
        with conn.cursor() as cr:
            cr.execute("UPDATE rtbus_session SET expires = (now() at time zone 'utc') - interval '1 day' "
                       "WHERE sid = %s", (sid,))
        conn.commit()
        # The UPDATE itself notifies; wait for it, so that it cannot be mistaken
        # for a notification of the DELETE below.
        assert _notifications(listener, until_count=1) == [sid[:SID_PREFIX_LENGTH]]
        with conn.cursor() as cr:
            cr.execute("DELETE FROM rtbus_session WHERE sid = %s", (sid,))
            cr.execute("SELECT pg_notify('rtbus_session', 'marker')")
        conn.commit()
        # NOTIFYs of one transaction arrive in order: seeing the marker alone
        # proves the DELETE sent nothing.
        assert _notifications(listener, until_count=1) == ["marker"]
    finally:
        conn.close()
        listener.close()
