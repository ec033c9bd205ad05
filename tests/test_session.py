"""Sessions against a real PostgreSQL: the SQL functions, the Python API, SessionStore's
checks and cache, and the security cases (forged, expired, revoked, rotated sids)."""

from __future__ import annotations

import re
import threading

import psycopg2
import pytest

from rtbus.config import Config
from rtbus.db.pool import ConnectionPool
from rtbus.session import (COOKIE_NAME, Session, SessionExpired, SessionNotFound, SessionStore,
                           create_session, gc_sessions, revoke_session, revoke_user_sessions,
                           rotate_session, set_groups, sid_from_cookie_header)
from waiting import wait_until

SID = re.compile(r"rb1_[A-Za-z0-9_-]{64}")    # signed (migration 0005)


@pytest.fixture
def db(schema_db) -> str:
    return schema_db


@pytest.fixture
def conn(pg_cluster, db):
    c = pg_cluster.connect(db)
    yield c
    c.close()


@pytest.fixture
def pool(pg_cluster):
    kwargs = pg_cluster.connect_kwargs()
    del kwargs["dbname"]
    p = ConnectionPool("test-session", 4, kwargs, timeout=5)
    yield p
    p.close_all()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def store_for(pool, cache_seconds=1.0, **kwargs) -> SessionStore:
    return SessionStore(pool, Config.defaults().replace(session_check_cache_seconds=cache_seconds),
                        **kwargs)


def new_session(conn, uid=42, partner_id=7, groups=(1,), ttl=3600) -> str:
    sid = create_session(conn, uid, partner_id, groups, ttl=ttl)
    conn.commit()
    return sid


def run(conn, query, params=()):
    with conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall() if cur.description else None
    conn.commit()
    return rows


# -- creating and reading -------------------------------------------------------------------


def test_created_session_is_returned_with_its_user(conn, pool, db):
    sid = new_session(conn, groups=(3, 1, 1))
    assert SID.fullmatch(sid)
    session = store_for(pool).get(db, sid)
    assert session == Session(sid=sid, dbname=db, uid=42, partner_id=7, group_ids=(1, 3),
                              is_websocket_session=False, expires_at=session.expires_at)
    assert not session.is_public
    assert session.expires_at.tzinfo is not None
    (seconds,) = run(conn, "SELECT extract(epoch FROM expires - created) FROM rtbus_session")[0]
    assert seconds == 3600
    assert sid not in repr(session)       # a sid is a credential: never whole in logs


def test_sids_are_unique_and_random_looking(conn):
    sids = {new_session(conn) for _ in range(50)}
    assert len(sids) == 50
    assert all(SID.fullmatch(s) for s in sids)


def test_sql_functions_work_inside_the_applications_transaction(conn, pool, db):
    (sid,) = run(conn, "SELECT rtbus_session_create(5, 9, ARRAY[2], 60)")[0]
    store = store_for(pool, cache_seconds=0)
    assert store.get(db, sid).uid == 5
    with conn.cursor() as cur:
        cur.execute("SELECT rtbus_session_create(6, NULL, NULL, 60)")
        rolled_back = cur.fetchone()[0]
    conn.rollback()
    assert store.get(db, rolled_back) is None
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        run(conn, "SELECT rtbus_session_create(6, NULL, NULL, 0)")
    conn.rollback()


def test_public_sessions(conn, pool, db):
    store = store_for(pool)
    public = store.public(db)
    assert public.is_public and public.sid is None and public.group_ids == ()
    stored = store.get(db, new_session(conn, uid=None, partner_id=None, groups=()))
    assert stored.is_public and stored.sid


# -- the security cases --------------------------------------------------------------------------


FORGED_SIDS = [
    "A" * 64,                                   # well-formed, never issued
    "' OR '1'='1",                              # SQL fragments
    "x'; DROP TABLE rtbus_session; --",
    '"quoted"',
    "a" * 10_000,                               # huge
    "short",
    "é" * 64,
    "",
    None,
    42,
    ["a" * 64],
]


def test_forged_sids_are_refused(conn, pool, db):
    new_session(conn)
    store = store_for(pool)
    for sid in FORGED_SIDS:
        assert store.get(db, sid) is None, sid
    assert store.stats()["refused"] == len(FORGED_SIDS)
    assert store.stats()["misses"] == 1               # only the well-formed one reached SQL
    for sid in FORGED_SIDS[:7]:
        with pytest.raises(SessionExpired):
            store.authenticate(db, sid)
    assert run(conn, "SELECT count(*) FROM rtbus_session")[0][0] == 1


def test_expired_session_is_refused(conn, pool, db):
    sid = new_session(conn)
    run(conn, "UPDATE rtbus_session SET expires = (now() at time zone 'utc') - interval '1 second'")
    assert store_for(pool).get(db, sid) is None


def test_cache_never_outlives_the_expiry(conn, pool, db):
    clock = FakeClock()
    store = store_for(pool, cache_seconds=60, clock=clock)
    sid = new_session(conn)
    run(conn, "UPDATE rtbus_session SET expires = (now() at time zone 'utc') + interval '2 seconds'")
    assert store.get(db, sid) is not None
    run(conn, "UPDATE rtbus_session SET expires = (now() at time zone 'utc') - interval '1 second'")
    clock.now += 1.0
    assert store.get(db, sid) is not None           # cached: fresh for min(60, 2) seconds
    clock.now += 1.5
    assert store.get(db, sid) is None


def test_revoked_session_is_refused_within_the_cache_bound(conn, pool, db):
    clock = FakeClock()
    store = store_for(pool, cache_seconds=1.0, clock=clock)
    sid = new_session(conn)
    session = store.check(store.get(db, sid))
    revoke_session(conn, sid)
    conn.commit()
    clock.now += 0.5
    assert store.check(session) is not None          # the documented bound: up to 1 s late
    clock.now += 0.6
    with pytest.raises(SessionExpired):
        store.check(session)
    assert store.get(db, sid) is None


def test_revoke_through_the_store_is_immediate_in_this_process(conn, pool, db):
    store = store_for(pool, cache_seconds=60)
    sid = new_session(conn)
    assert store.get(db, sid) is not None
    store.revoke(db, sid)
    assert store.get(db, sid) is None


def test_rotated_session_is_refused_and_its_successor_valid(conn, pool, db):
    store = store_for(pool, cache_seconds=0)
    old = new_session(conn, groups=(1, 2), ttl=7200)
    assert store.mark_websocket_session(db, old)
    new = rotate_session(conn, old)
    conn.commit()
    assert SID.fullmatch(new) and new != old
    assert store.get(db, old) is None
    successor = store.get(db, new)
    assert (successor.uid, successor.partner_id, successor.group_ids) == (42, 7, (1, 2))
    assert successor.is_websocket_session
    (seconds,) = run(conn, "SELECT extract(epoch FROM expires - created) FROM rtbus_session"
                           " WHERE sid = %s", (new,))[0]
    assert seconds == 7200
    with pytest.raises(SessionNotFound):
        rotate_session(conn, old)
    conn.rollback()
    # A logout presenting the stale cookie ends the session the browser holds now.
    revoke_session(conn, old)
    conn.commit()
    assert store.get(db, new) is None
    with pytest.raises(SessionNotFound):
        rotate_session(conn, new)


def test_concurrent_rotations_of_one_sid_make_one_successor(pg_cluster, conn, db):
    old = new_session(conn)
    results, barrier = [], threading.Barrier(4)

    def rotate():
        c = pg_cluster.connect(db)
        try:
            barrier.wait(5)
            with c.cursor() as cur:
                cur.execute("SELECT rtbus_session_rotate(%s)", (old,))
                results.append(cur.fetchone()[0])
            c.commit()
        finally:
            c.close()

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results, key=lambda r: r is None)[1:] == [None, None, None]
    assert run(conn, "SELECT count(*) FROM rtbus_session")[0][0] == 2


def test_revoke_every_session_of_a_user(conn, pool, db):
    a, b = new_session(conn, uid=3), new_session(conn, uid=3)
    other = new_session(conn, uid=4)
    rotate_session(conn, b)
    conn.commit()
    assert revoke_user_sessions(conn, 3) == 2       # a and b's successor; b was rotated
    conn.commit()
    store = store_for(pool, cache_seconds=0)
    assert store.get(db, a) is None
    assert store.get(db, other) is not None


# -- groups -------------------------------------------------------------------------------------


def test_effective_groups_include_implied_ones_transitively(conn, pool, db):
    set_groups(conn, {
        1: ("Internal User", [2]),
        2: ("Employee", [3]),
        3: ("Base", []),
        4: ("Cycle A", [5]),
        5: ("Cycle B", [4]),           # an implication cycle must not loop
        9: ("Unrelated", []),
    })
    conn.commit()
    store = store_for(pool, cache_seconds=60)
    sid = new_session(conn, groups=(1, 4, 8))      # 8 is not declared: held as is
    assert store.get(db, sid).group_ids == (1, 2, 3, 4, 5, 8)
    set_groups(conn, {3: ("Base", [9])})
    conn.commit()
    assert store.get(db, sid).group_ids == (1, 2, 3, 4, 5, 8)   # cached
    store.invalidate(db, sid)
    assert store.get(db, sid).group_ids == (1, 2, 3, 4, 5, 8, 9)
    set_groups(conn, {1: ("Internal User", [])}, replace=True)
    conn.commit()
    store.invalidate()
    assert store.get(db, sid).group_ids == (1, 4, 8)
    assert run(conn, "SELECT id, name, implied_ids FROM rtbus_group") == [(1, "Internal User", [])]


# -- websocket flag and peek rules ---------------------------------------------------------------


def test_peek_rules(conn, pool, db):
    store = store_for(pool, cache_seconds=60)
    # No cookie: nothing carries the first poll's mark, so only a first poll passes.
    assert store.check_poll(db, None, is_first_poll=True).is_public
    with pytest.raises(SessionExpired):
        store.check_poll(db, None, is_first_poll=False)
    sid = new_session(conn)
    with pytest.raises(SessionExpired):
        store.check_poll(db, sid, is_first_poll=False)    # never marked: logged in meanwhile
    assert store.check_poll(db, sid, is_first_poll=True).is_websocket_session
    assert store.check_poll(db, sid, is_first_poll=False).uid == 42
    store.invalidate()
    assert store.get(db, sid).is_websocket_session        # stored, not only cached
    with pytest.raises(SessionExpired):
        store.check_poll(db, "B" * 64, is_first_poll=True)
    store.revoke(db, sid)
    with pytest.raises(SessionExpired):
        store.check_poll(db, sid, is_first_poll=True)
    assert not store.mark_websocket_session(db, sid)


def test_authenticate_and_check(conn, pool, db):
    store = store_for(pool)
    public = store.authenticate(db, None)
    assert public.is_public and store.check(public) is public
    sid = new_session(conn)
    assert store.authenticate(db, sid).uid == 42


# -- cache ----------------------------------------------------------------------------------------


def test_cache_hits_and_bounded_size(conn, pool, db):
    store = store_for(pool, cache_seconds=60, cache_size=2)
    sids = [new_session(conn) for _ in range(3)]
    for sid in sids:
        store.get(db, sid)
    store.get(db, sids[2])
    stats = store.stats()
    assert stats["cached"] == 2 and stats["evictions"] == 1
    assert stats["hits"] == 1 and stats["misses"] == 3


def test_check_cached_answers_only_from_a_fresh_cache_entry(conn, pool, db):
    clock = FakeClock()
    store = store_for(pool, cache_seconds=1.0, clock=clock)
    public = store.public(db)
    assert store.check_cached(public) is public
    sid = new_session(conn)
    session = store.get(db, sid)
    lookups = store.stats()["misses"]
    assert store.check_cached(session) == session
    clock.now += 1.1                                  # stale: only a query can tell
    assert store.check_cached(session) is None
    store.revoke(db, sid)                             # invalidated: never answered from memory
    assert store.check_cached(session) is None
    assert store.stats()["misses"] == lookups         # check_cached never queried


def test_zero_cache_asks_every_time(conn, pool, db):
    store = store_for(pool, cache_seconds=0)
    sid = new_session(conn)
    store.get(db, sid)
    store.get(db, sid)
    assert store.stats()["misses"] == 2 and store.stats()["cached"] == 0


# -- garbage collection ---------------------------------------------------------------------------


def test_gc_deletes_expired_sessions_only(conn, pool, db):
    keep = new_session(conn)
    for _ in range(5):
        new_session(conn)
    run(conn, "UPDATE rtbus_session SET expires = (now() at time zone 'utc') - interval '1 hour'"
              " WHERE sid <> %s", (keep,))
    assert gc_sessions(conn, batch_size=2) == 5
    assert run(conn, "SELECT sid FROM rtbus_session") == [(keep,)]
    assert gc_sessions(conn) == 0
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(RuntimeError):
        gc_sessions(conn)
    conn.rollback()


# -- the cookie -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source, expected", [
    ({"HTTP_COOKIE": "a=1; session_id=abc; b=2", "REQUEST_METHOD": "GET"}, "abc"),
    ({"REQUEST_METHOD": "GET"}, None),
    ("session_id=abc", "abc"),
    ('session_id="abc"', "abc"),
    ("bad cookie; =x; session_id=first; session_id=second", "first"),
    ("other_session_id=no; xsession_id=no", None),
    ("session_id=", None),
    ("", None),
    (b"session_id=raw", "raw"),
    ({COOKIE_NAME: "from-mapping"}, "from-mapping"),
    ({"other": "x"}, None),
    (None, None),
])
def test_sid_from_cookie_header(source, expected):
    assert sid_from_cookie_header(source) == expected


def test_the_mac_key_is_read_once_however_many_first_requests_arrive_together(pg_cluster, db):
    """A flood's first requests all reach the guard before its key is known: one of them
    reads it, the others wait for that read instead of each borrowing a connection."""
    from rtbus.session_guard import SIGNED_SID_LENGTH, SID_PREFIX, LookupBudget, SessionGuard

    kwargs = pg_cluster.connect_kwargs()
    del kwargs["dbname"]
    pool = ConnectionPool("test-key-once", 1, kwargs, timeout=5)
    borrowed = []

    class Counting:
        def connection(self, dbname):
            borrowed.append(dbname)
            return pool.connection(dbname)

    guard = SessionGuard(Counting(), LookupBudget(0, 0))
    forged = SID_PREFIX + "A" * (SIGNED_SID_LENGTH - len(SID_PREFIX))
    start = threading.Barrier(20)
    answers = []

    def first_request():
        start.wait()
        answers.append(guard.signed(db, forged))

    threads = [threading.Thread(target=first_request) for _ in range(20)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        pool.close_all()
    assert answers == [False] * 20
    assert borrowed == [db]


def test_unknown_sids_hold_all_but_one_pooled_connection_at_once(pg_cluster, conn, db):
    """While a flood's look-ups are in flight, one connection of the pool stays free for
    everything else: the look-up beyond the slots is refused at once, its token kept."""
    from rtbus.errors import LookupBudgetExceeded

    kwargs = pg_cluster.connect_kwargs()
    del kwargs["dbname"]
    pool = ConnectionPool("test-unknown-slots", 3, kwargs, timeout=5)
    store = SessionStore(pool, Config.defaults().replace(session_lookup_budget=100))
    unknown = "u" * 40
    with conn.cursor() as cur:
        cur.execute("LOCK TABLE rtbus_session IN ACCESS EXCLUSIVE MODE")   # look-ups wait here
    outcomes = []

    def look_up():
        try:
            outcomes.append(store.get(db, unknown, client="192.0.2.9"))
        except LookupBudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=look_up) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: pool.stats()["in_use"] == 2, 10, message="two look-ups in flight")
        look_up()
        assert outcomes == ["refused"]
        with pool.connection(db, timeout=1) as free:      # the one left for everything else
            free.rollback()
    finally:
        conn.rollback()                                   # release the lock
        for thread in threads:
            thread.join(10)
        pool.close_all()
    assert outcomes.count(None) == 2
    # The refused look-up took no token: 100 a minute, 2 spent.
    assert store.guard.budget.take("192.0.2.9")
