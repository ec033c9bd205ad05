"""ConnectionPool against a real PostgreSQL: reuse, bounds, waiting, eviction, breakage."""

from __future__ import annotations

import logging
import re
import threading
import time

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool
import pytest

from rtbus.db.cluster import free_loopback_port
from rtbus.db.pool import ConnectionPool
from rtbus.errors import PoolError
from waiting import wait_until


@pytest.fixture
def make_pool(pg_cluster):
    """Build pools on pg_cluster; every one is closed after the test."""
    pools = []

    def make(maxconn=2, name="test", **kwargs):
        connect_kwargs = {k: v for k, v in pg_cluster.connect_kwargs().items() if k != "dbname"}
        pool = ConnectionPool(name, maxconn, connect_kwargs, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close_all()


def backend_pid(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


class FakeClock:
    """The pool's clock, moved by hand: ages and intervals without waiting them out."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(predicate, timeout=5.0):
    wait_until(predicate, timeout, message="the pool's stats to show it")


def start_thread(target):
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_idle_connection_is_reused_and_left_clean(make_pool, fresh_db):
    pool = make_pool()
    with pool.connection(fresh_db) as conn:
        first = conn
        assert not conn.autocommit and conn.isolation_level is None
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1)")   # left pending: rolled back on give-back
    with pool.connection(fresh_db) as conn:
        assert conn is first
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchone()[0] == 0
        conn.rollback()
        conn.autocommit = True                        # session attributes are restored too
        conn.set_session(readonly=True)
    with pool.connection(fresh_db) as conn:
        assert conn is first
        assert not conn.autocommit and conn.readonly is None
    stats = pool.stats()
    assert (stats["borrows"], stats["connects"], stats["in_use"], stats["idle"]) == (3, 1, 0, 1)


def test_exhaustion_names_the_pool_and_the_numbers(make_pool, fresh_db, caplog):
    pool = make_pool(maxconn=2, name="gevent")
    held = [pool.borrow(fresh_db), pool.borrow(fresh_db)]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rtbus.db.pool"):
        with pytest.raises(PoolError) as info:
            pool.borrow(fresh_db, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.5
    assert str(info.value) == (
        "pool 'gevent' exhausted: no connection free after 0.20 s (2/2 in use, 0 waiting, max 2)")
    assert isinstance(info.value, psycopg2.pool.PoolError)   # psycopg2 code catches it unchanged
    assert [r.getMessage() for r in caplog.records] == [str(info.value)]
    stats = pool.stats()
    assert (stats["pool_errors"], stats["waits"], stats["in_use"]) == (1, 1, 2)
    assert stats["wait_seconds_total"] >= 0.2
    assert repr(pool) == "ConnectionPool('gevent', used=2/count=2/max=2)"
    for conn in held:
        pool.give_back(conn)
    assert repr(pool) == "ConnectionPool('gevent', used=0/count=2/max=2)"


def test_pool_warnings_are_rate_limited(make_pool, fresh_db, caplog):
    clock = FakeClock()
    pool = make_pool(maxconn=1, clock=clock)
    held = pool.borrow(fresh_db)
    with caplog.at_level(logging.WARNING, logger="rtbus.db.pool"):
        for _ in range(4):
            with pytest.raises(PoolError):
                pool.borrow(fresh_db, timeout=0)
        assert len(caplog.records) == 1
        clock.advance(0.99)
        with pytest.raises(PoolError):
            pool.borrow(fresh_db, timeout=0)
        assert len(caplog.records) == 1
        clock.advance(0.02)
        with pytest.raises(PoolError):
            pool.borrow(fresh_db, timeout=0)
    assert len(caplog.records) == 2
    assert "4 similar errors suppressed" in caplog.records[1].getMessage()
    assert pool.stats()["pool_errors"] == 6
    pool.give_back(held)


def test_waiter_gets_the_connection_given_back(make_pool, fresh_db):
    clock = FakeClock()
    pool = make_pool(maxconn=1, clock=clock)
    held = pool.borrow(fresh_db)
    got = []
    thread = start_thread(lambda: got.append(pool.borrow(fresh_db, timeout=10)))
    wait_for(lambda: pool.stats()["waiting"] == 1)
    clock.advance(0.25)                  # the waiter waits this long, as the pool counts
    pool.give_back(held)
    thread.join(5)
    assert got == [held]            # handed over directly, no reconnect
    stats = pool.stats()
    assert (stats["waits"], stats["connects"], stats["waiting"], stats["pool_errors"]) == (1, 1, 0, 0)
    assert stats["wait_seconds_total"] == pytest.approx(0.25)
    pool.give_back(got[0])


def test_waiters_are_served_in_order(make_pool, fresh_db):
    pool = make_pool(maxconn=1)
    held = pool.borrow(fresh_db)
    order = []

    def borrower(tag):
        conn = pool.borrow(fresh_db, timeout=10)
        order.append(tag)
        pool.give_back(conn)

    threads = []
    for tag in range(4):
        threads.append(start_thread(lambda tag=tag: borrower(tag)))
        wait_for(lambda n=tag + 1: pool.stats()["waiting"] == n)
    pool.give_back(held)
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]


def test_max_waiting_bounds_the_queue(make_pool, fresh_db):
    pool = make_pool(maxconn=1, max_waiting=1)
    held = pool.borrow(fresh_db)
    got = []
    thread = start_thread(lambda: got.append(pool.borrow(fresh_db, timeout=10)))
    wait_for(lambda: pool.stats()["waiting"] == 1)
    started = time.monotonic()
    with pytest.raises(PoolError, match=re.escape(
            "pool 'test' exhausted: 1 borrowers already waiting (max_waiting 1) "
            "(1/1 in use, 1 waiting, max 1)")):
        pool.borrow(fresh_db, timeout=10)
    assert time.monotonic() - started < 1      # refused at once, not after the timeout
    pool.give_back(held)
    thread.join(5)
    assert got == [held]
    pool.give_back(held)


def test_full_pool_evicts_an_idle_connection_of_another_database(make_pool, pg_cluster, fresh_db):
    pool = make_pool(maxconn=2)
    first, second = pool.borrow("postgres"), pool.borrow("postgres")
    pool.give_back(first)
    pool.give_back(second)
    with pool.connection(fresh_db) as conn:
        assert conn.info.dbname == fresh_db
        stats = pool.stats()
        assert (stats["in_use"], stats["idle"], stats["connects"], stats["discards"]) == (1, 1, 3, 1)
    assert first.closed                          # the oldest idle one made room
    assert not second.closed


def test_waiter_for_another_database_gets_the_freed_slot(make_pool, fresh_db):
    pool = make_pool(maxconn=1)
    held = pool.borrow("postgres")
    got = []
    thread = start_thread(lambda: got.append(pool.borrow(fresh_db, timeout=10)))
    wait_for(lambda: pool.stats()["waiting"] == 1)
    pool.give_back(held)
    thread.join(5)
    assert held.closed and got[0].info.dbname == fresh_db
    stats = pool.stats()
    assert (stats["in_use"], stats["idle"], stats["connects"]) == (1, 0, 2)
    pool.give_back(got[0])


def terminate(pg_cluster, pid: int) -> None:
    """End backend `pid` and wait until it is gone (pg_terminate_backend only signals it)."""
    with pg_cluster.connect() as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        admin.commit()

        def gone():
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            admin.commit()
            return cur.fetchone()[0] == 0

        wait_until(gone, 10, message=f"backend {pid} to end after pg_terminate_backend")


def test_idle_connection_whose_backend_ended_is_replaced_at_borrow(make_pool, pg_cluster, fresh_db):
    pool = make_pool()
    with pool.connection(fresh_db) as conn:
        old_pid = backend_pid(conn)
    terminate(pg_cluster, old_pid)
    with pool.connection(fresh_db) as conn:       # no error: the dead one is noticed first
        assert backend_pid(conn) != old_pid
    stats = pool.stats()
    assert (stats["dead"], stats["discards"], stats["connects"]) == (1, 1, 2)
    assert (stats["in_use"], stats["idle"]) == (0, 1)


def test_connection_broken_while_lent_is_discarded_not_reused(make_pool, pg_cluster, fresh_db):
    pool = make_pool()
    with pytest.raises(psycopg2.OperationalError):
        with pool.connection(fresh_db) as conn:
            old_pid = backend_pid(conn)
            terminate(pg_cluster, old_pid)
            backend_pid(conn)
    assert pool.stats()["discards"] == 1
    with pool.connection(fresh_db) as conn:
        assert backend_pid(conn) != old_pid
    stats = pool.stats()
    assert (stats["connects"], stats["in_use"], stats["idle"]) == (2, 0, 1)


def test_server_error_that_keeps_the_session_keeps_the_connection(make_pool, fresh_db):
    pool = make_pool()
    with pytest.raises(psycopg2.errors.QueryCanceled):   # an OperationalError subclass
        with pool.connection(fresh_db) as conn:
            pid = backend_pid(conn)
            with conn.cursor() as cur:
                cur.execute("SET LOCAL statement_timeout = 10")
                cur.execute("SELECT pg_sleep(2)")
    with pool.connection(fresh_db) as conn:
        assert backend_pid(conn) == pid
    assert pool.stats()["discards"] == 0


def test_explicit_discard(make_pool, fresh_db):
    pool = make_pool()
    conn = pool.borrow(fresh_db)
    pool.give_back(conn, discard=True)
    assert conn.closed
    assert pool.stats()["discards"] == 1 and pool.stats()["idle"] == 0


def test_idle_connections_expire(make_pool, fresh_db):
    clock = FakeClock()
    pool = make_pool(idle_timeout=0.2, clock=clock)
    with pool.connection(fresh_db) as conn:
        first = conn
    clock.advance(0.19)
    with pool.connection(fresh_db) as conn:      # younger than idle_timeout: kept
        assert conn is first
    clock.advance(0.21)
    with pool.connection(fresh_db) as conn:
        assert conn is not first
    assert first.closed
    stats = pool.stats()
    assert (stats["connects"], stats["discards"]) == (2, 1)


def test_giving_back_a_foreign_or_returned_connection_fails(make_pool, pg_cluster, fresh_db):
    pool = make_pool()
    stranger = pg_cluster.connect(fresh_db)
    try:
        with pytest.raises(PoolError, match="does not belong to pool 'test'"):
            pool.give_back(stranger)
    finally:
        stranger.close()
    conn = pool.borrow(fresh_db)
    pool.give_back(conn)
    with pytest.raises(PoolError, match="does not belong to pool 'test'"):
        pool.give_back(conn)


def test_close_all_closes_idle_now_and_in_use_on_return(make_pool, fresh_db):
    pool = make_pool()
    idle, busy = pool.borrow(fresh_db), pool.borrow(fresh_db)
    pool.give_back(idle)
    pool.close_all()
    assert idle.closed and not busy.closed
    pool.give_back(busy)
    assert busy.closed
    assert pool.stats()["idle"] == 0 and pool.stats()["in_use"] == 0


def test_on_connect_runs_once_per_connection_and_its_failure_frees_the_slot(make_pool, fresh_db):
    seen = []
    pool = make_pool(maxconn=1, on_connect=seen.append)
    for _ in range(3):
        with pool.connection(fresh_db):
            pass
    assert len(seen) == 1

    def refuse(conn):
        raise RuntimeError("no thanks")

    failing = make_pool(maxconn=1, on_connect=refuse)
    for _ in range(2):   # the slot is released each time, so the second attempt is not PoolError
        with pytest.raises(RuntimeError):
            failing.borrow(fresh_db, timeout=0)
    assert failing.stats()["in_use"] == 0 and failing.stats()["connects"] == 0


def test_connect_failure_frees_the_slot():
    pool = ConnectionPool("dead", 1, {"host": "127.0.0.1", "port": free_loopback_port(),
                                      "user": "postgres", "connect_timeout": 2})
    for _ in range(2):
        with pytest.raises(psycopg2.OperationalError):
            pool.borrow("postgres", timeout=0)
    assert pool.stats()["in_use"] == 0


def test_contention_keeps_the_books_straight(make_pool, fresh_db):
    pool = make_pool(maxconn=4, timeout=20)
    errors, peak = [], []

    def worker():
        try:
            for _ in range(50):
                with pool.connection(fresh_db) as conn:
                    peak.append(pool.stats()["in_use"])
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
        except Exception as exc:  # reported below, a thread cannot fail the test itself
            errors.append(exc)

    threads = [start_thread(worker) for _ in range(20)]
    for thread in threads:
        thread.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    stats = pool.stats()
    assert stats["borrows"] == 1000 and stats["pool_errors"] == 0
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    assert 1 <= stats["idle"] <= 4 and max(peak) <= 4
    assert stats["connects"] - stats["discards"] == stats["idle"]
    assert stats["waits"] > 0
