"""The stream SQL of migrations 0006 and 0007 against a real PostgreSQL: epochs, late rows, replay."""

from __future__ import annotations

import pytest

BACKLOG = 50.0


@pytest.fixture
def db(bus_db, connections):
    """(autocommit connection, factory of further connections) on a fresh schema database."""
    conn = connections(bus_db, autocommit=True)
    return conn, lambda: connections(bus_db)


def insert(conn, channel="c", count=1) -> list[int]:
    with conn.cursor() as cur:
        ids = []
        for _ in range(count):
            cur.execute("INSERT INTO bus_bus (channel, message) VALUES (%s, '{}') RETURNING id",
                        (channel,))
            ids.append(cur.fetchone()[0])
    return ids


def step(conn, after):
    """One wake-up: (newest epoch, [(epoch, id)], regressed)."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM rtbus_bus_stream_next(%s, %s)", (after, BACKLOG))
        rows = cur.fetchall()
    header, rest = rows[0], rows[1:]
    assert header[1] is None
    return header[0], sorted((r[0], r[1]) for r in rest), header[5]


def replay(conn, cur_epoch, last, epoch=None, window=False, channels=("c",), limit=1000):
    with conn.cursor() as cur:
        cur.execute("SELECT epoch, id FROM rtbus_bus_replay(%s, %s, %s, %s, %s, %s, %s)",
                    (epoch, last, window, cur_epoch, list(channels), BACKLOG, limit))
        return cur.fetchall()[1:]          # after the header: where it started


def test_rows_arrive_once_in_epoch_order(db):
    conn, _ = db
    e0, rows, _ = step(conn, None)
    a = insert(conn, count=2)
    e1, rows, regressed = step(conn, e0)
    assert e1 == e0 + 1 and [r[1] for r in rows] == a and not regressed
    e2, rows, _ = step(conn, e1)
    assert e2 == e1 and rows == []


def test_a_late_transaction_is_read_after_higher_ids(db):
    conn, connect = db
    e, _, _ = step(conn, None)
    slow = connect()
    (late_id,) = insert(slow)
    early = insert(conn, count=2)
    e, rows, _ = step(conn, e)
    assert [r[1] for r in rows] == early
    slow.commit()
    e2, rows, _ = step(conn, e)
    assert rows == [(e2, late_id)]
    # Replay from the last early row gives the late one; from the late one, nothing.
    assert replay(conn, e2, early[-1]) == [(e2, late_id)]
    assert replay(conn, e2, late_id) == []
    assert replay(conn, e2, early[0]) == [(e, early[1]), (e2, late_id)]


def pages(conn, cur_epoch, last, limit, window=False, channels=("c",)):
    """Every row after `last`, read `limit` at a time, each page continuing from the last row."""
    rows = replay(conn, cur_epoch, last, window=window, channels=channels, limit=limit)
    found = list(rows)
    while len(rows) == limit:
        rows = replay(conn, cur_epoch, rows[-1][1], epoch=rows[-1][0], window=window,
                      channels=channels, limit=limit)
        found += rows
    return found


def test_pages_of_any_size_give_the_stream_order_across_late_rows(db):
    """A page is cut from a bounded set of candidates (migration 0007): small pages, late
    rows of several epochs and another channel's rows in between change nothing."""
    conn, connect = db
    e, _, _ = step(conn, None)
    first = insert(conn, count=3)
    slow, slower = connect(), connect()
    (late,) = insert(slow)
    (later,) = insert(slower)
    insert(conn, channel="other", count=2)
    e, _, _ = step(conn, e)
    middle = insert(conn, count=3)
    e, _, _ = step(conn, e)
    slow.commit()
    last = insert(conn, count=2)
    e, _, _ = step(conn, e)            # late, then last: one epoch, in id order
    slower.commit()
    e, _, _ = step(conn, e)
    whole = replay(conn, e, first[0])
    assert [r[1] for r in whole] == [*first[1:], *middle, late, *last, later]
    assert whole == sorted(whole)
    after_late = whole[[r[1] for r in whole].index(late) + 1:]
    assert [r[1] for r in after_late] == [*last, later]
    window = replay(conn, e, 0)
    assert [r[1] for r in window] == [*first, *middle, late, *last, later]
    for limit in (1, 2, 3, 5):
        assert pages(conn, e, first[0], limit) == whole
        assert pages(conn, e, late, limit) == after_late
        assert pages(conn, e, 0, limit, window=True) == window


def test_an_aborted_transaction_leaves_no_hole(db):
    conn, connect = db
    e, _, _ = step(conn, None)
    slow = connect()
    insert(slow)
    insert(conn)
    e, rows, _ = step(conn, e)
    slow.rollback()
    more = insert(conn)
    e2, rows, _ = step(conn, e)
    assert [r[1] for r in rows] == more


def test_other_processes_epochs_are_included(db):
    conn, connect = db
    other = connect()
    other.autocommit = True
    e, _, _ = step(conn, None)
    a = insert(conn)
    e_other, _, _ = step(other, e)
    b = insert(conn)
    e_mine, rows, _ = step(conn, e)
    assert rows == [(e_other, a[0]), (e_mine, b[0])]


def test_truncate_restart_identity_is_a_regression(db):
    conn, _ = db
    e, _, _ = step(conn, None)
    insert(conn, count=3)
    e, _, _ = step(conn, e)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE bus_bus RESTART IDENTITY")
    fresh = insert(conn)
    e2, rows, regressed = step(conn, e)
    assert regressed and [r[1] for r in rows] == fresh == [1]
    more = insert(conn)
    e3, rows, regressed = step(conn, e2)
    assert not regressed and [r[1] for r in rows] == more
    assert [r[1] for r in replay(conn, e3, fresh[0])] == more


def test_last_zero_and_last_above_max_replay_the_window(db):
    conn, _ = db
    e, _, _ = step(conn, None)
    old = insert(conn)
    with conn.cursor() as cur:
        cur.execute("UPDATE bus_bus SET create_date = create_date - interval '120 seconds'")
    new = insert(conn, count=2)
    e, _, _ = step(conn, e)
    assert [r[1] for r in replay(conn, e, 0)] == new
    assert [r[1] for r in replay(conn, e, new[-1] + 100)] == new
    assert [r[1] for r in replay(conn, e, old[0])] == new
    assert [r[1] for r in replay(conn, e, 0, limit=1)] == new[:1]
    assert [r[1] for r in replay(conn, e, new[0], epoch=e, window=True)] == new[1:]


def test_a_process_behind_a_restart_gets_the_rows_since(db):
    conn, connect = db
    other = connect()
    other.autocommit = True
    e, _, _ = step(conn, None)
    insert(conn, count=2)
    e, _, _ = step(conn, e)
    behind = e
    with conn.cursor() as cur:
        cur.execute("TRUNCATE bus_bus RESTART IDENTITY")
    fresh = insert(conn)
    e2, rows, regressed = step(conn, e)
    assert regressed and [r[1] for r in rows] == fresh
    e3, rows, regressed = step(other, behind)
    assert regressed and [r[1] for r in rows] == fresh


def test_gc_keeps_the_newest_epoch(db, bus_db, connections):
    from rtbus.bus.gc import collect_garbage

    conn, _ = db
    e, _, _ = step(conn, None)
    insert(conn)
    e, _, _ = step(conn, e)
    with conn.cursor() as cur:
        cur.execute("UPDATE rtbus_bus_stream SET create_date = create_date - interval '2 days'")
    collect_garbage(connections(bus_db), 86400)
    with conn.cursor() as cur:
        cur.execute("SELECT epoch FROM rtbus_bus_stream")
        assert cur.fetchall() == [(e,)]
    more = insert(conn)
    e2, rows, _ = step(conn, e)
    assert [r[1] for r in rows] == more


def test_epochs_going_backwards_restart_the_stream(db):
    conn, _ = db
    e, _, _ = step(conn, None)
    insert(conn)
    e, _, _ = step(conn, e)
    with conn.cursor() as cur:           # the stream table restored from an older dump
        cur.execute("TRUNCATE rtbus_bus_stream, rtbus_bus_late")
    e0, _, _ = step(conn, None)
    fresh = insert(conn)
    e2, rows, regressed = step(conn, e + 5)
    assert regressed and fresh[0] in [r[1] for r in rows]


def test_a_last_older_than_the_horizon_falls_back_to_ids(db):
    conn, connect = db
    e, _, _ = step(conn, None)
    slow = connect()
    (late,) = insert(slow)
    early = insert(conn, count=2)
    e, _, _ = step(conn, e)
    slow.commit()
    e, _, _ = step(conn, e)
    more = insert(conn)
    e, _, _ = step(conn, e)
    with conn.cursor() as cur:           # the GC took the epochs that placed early and late
        cur.execute("DELETE FROM rtbus_bus_stream WHERE epoch < %s", (e,))
        cur.execute("DELETE FROM rtbus_bus_late")
    # Exact positions are gone: "every id above last", the rule of pre-migration rows.
    assert [r[1] for r in replay(conn, e, early[0])] == [early[1], *more]
    assert [r[1] for r in replay(conn, e, late)] == [*early, *more]
