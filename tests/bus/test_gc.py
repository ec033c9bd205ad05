"""Garbage collection of bus_bus against a real PostgreSQL."""

from __future__ import annotations

import pytest

from rtbus.bus.gc import collect_garbage, last_run


def _insert_aged(conn, ages_seconds):
    with conn.cursor() as cur:
        for age in ages_seconds:
            cur.execute("INSERT INTO bus_bus (channel, message, create_date) VALUES"
                        " ('[\"d\",\"c\"]', '{}', (now() at time zone 'utc')"
                        " - %s * interval '1 second')", (age,))
    conn.commit()


def _ages(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT round(extract(epoch FROM (now() at time zone 'utc') - create_date))"
                    " FROM bus_bus ORDER BY id")
        rows = [int(r[0]) for r in cur.fetchall()]
    conn.rollback()
    return rows


def test_rows_past_retention_go_rows_within_stay(bus_db, connections):
    conn = connections(bus_db)
    assert last_run(conn) is None
    _insert_aged(conn, [86400 // 2, 86400 + 60, 0, 90000])
    assert collect_garbage(conn, 86400) == 2
    assert _ages(conn) == [43200, 0]
    when, deleted = last_run(conn)
    assert deleted == 2 and when is not None
    assert collect_garbage(conn, 86400) == 0
    assert last_run(conn)[1] == 0


def test_batches_are_bounded(bus_db, connections):
    conn = connections(bus_db)
    _insert_aged(conn, [200] * 25)
    assert collect_garbage(conn, 100, batch_size=10, max_batches=2) == 20
    assert len(_ages(conn)) == 5
    assert collect_garbage(conn, 100, batch_size=10, max_batches=2) == 5
    assert _ages(conn) == []


def test_refuses_a_connection_inside_a_transaction(bus_db, connections):
    conn = connections(bus_db)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(RuntimeError):
        collect_garbage(conn, 100)
