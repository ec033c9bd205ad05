"""NOTIFY payload building and splitting (no database), and sending (real PostgreSQL)."""

from __future__ import annotations

import logging
import select
import time

import orjson
import psycopg2
import pytest

from rtbus.bus.channels import encode
from rtbus.bus.notify import function_identifier, notify_payloads, send_notify


def test_empty_and_small_lists():
    assert notify_payloads([], 8000) == []
    channels = [encode("db", "broadcast"), encode("db", ("res.partner", 7))]
    assert notify_payloads(channels, 8000) == ['[["db","broadcast"],["db","res.partner",7]]']


def test_1000_channels_split_by_halving_each_part_fits(caplog):
    channels = [encode("mydb", ("res.partner", i)) for i in range(1000)]
    with caplog.at_level(logging.INFO, logger="rtbus.bus.notify"):
        payloads = notify_payloads(channels, 8000)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    # Nothing lost, nothing duplicated, order kept.
    rebuilt = [encode("mydb", tuple(c[1:])) for p in payloads for c in orjson.loads(p)]
    assert rebuilt == channels
    # Halving: 1000 -> 500 -> 250 (each part 250 channels of ~25 bytes, ~6.5 kB).
    assert [len(orjson.loads(p)) for p in payloads] == [250] * 4
    assert caplog.messages == [f"imbus notification payload too large, split into {len(payloads)} payloads"]


def test_limit_is_exclusive():
    channels = [encode("d", "a"), encode("d", "b")]
    joined = "[" + ",".join(channels) + "]"
    assert notify_payloads(channels, len(joined) + 1) == [joined]
    assert len(notify_payloads(channels, len(joined))) == 2


def test_single_channel_is_never_split(caplog):
    huge = encode("db", "x" * 900)
    with caplog.at_level(logging.INFO, logger="rtbus.bus.notify"):
        assert notify_payloads([huge], 100) == ["[" + huge + "]"]
    assert not caplog.messages


def test_odd_counts_split_at_ceil_half():
    channels = [encode("db", str(i)) for i in range(3)]
    sizes = [len(orjson.loads(p)) for p in notify_payloads(channels, 20)]
    assert sizes == [1, 1, 1]
    sizes = [len(orjson.loads(p)) for p in notify_payloads(channels, 30)]
    assert sizes == [2, 1]


def test_function_identifier():
    assert function_identifier("pg_notify").strings == ("pg_notify",)
    assert function_identifier("myschema.my_notify").strings == ("myschema", "my_notify")
    for bad in ("", "a..b", ".x", "a.b.c"):
        with pytest.raises(ValueError):
            function_identifier(bad)


def _listen(pg_cluster, dbname):
    conn = pg_cluster.connect(dbname)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("LISTEN imbus")
    return conn


def _collect(conn, want, timeout=5.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
        conn.poll()
        got.extend(n.payload for n in conn.notifies)
        conn.notifies.clear()
    return got


def test_send_notify_quoted_function_after_commit_only(pg_cluster, fresh_db):
    listener = _listen(pg_cluster, fresh_db)
    sender = pg_cluster.connect(fresh_db)
    try:
        with sender.cursor() as cur:
            send_notify(cur, ['[["a","b"]]', '[["a","c"]]'], "pg_catalog.pg_notify")
        assert _collect(listener, 1, timeout=0.2) == []       # not before commit
        sender.commit()
        assert _collect(listener, 2) == ['[["a","b"]]', '[["a","c"]]']
        with sender.cursor() as cur:
            send_notify(cur, ['[["a","d"]]'])
        sender.rollback()
        assert _collect(listener, 1, timeout=0.3) == []
        with sender.cursor() as cur, pytest.raises(psycopg2.errors.UndefinedFunction):
            send_notify(cur, ['[]'], 'no_such"function')
    finally:
        sender.close()
        listener.close()
