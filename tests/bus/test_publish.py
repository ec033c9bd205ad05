"""Publishing: Python API (BusConnection, publishing(), Publisher) and the SQL function."""

from __future__ import annotations

import datetime
import decimal
import logging

import orjson
import psycopg2
import pytest

from rtbus.bus import publish as bus_publish
from rtbus.bus.channels import InvalidChannel
from rtbus.bus.publish import (Notifier, Publisher, encode_message, publishing,
                               sendmany, sendone)
from rtbus.db.pool import ConnectionPool


def mine(payloads, dbname):
    """The NOTIFY payloads about database `dbname` (other tests may notify on postgres)."""
    return [p for p in payloads if f'"{dbname}"' in p]


# -- stored formats ------------------------------------------------------------------------

def test_message_format_is_compact_json_with_odoo_dates():
    payload = {"when": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
               "day": datetime.date(2024, 5, 6), "n": [1, 2.5, None, True], "s": "é\n\"",
               3: "int key", "d": decimal.Decimal("1.50"), "b": b"raw"}
    assert encode_message("mail.message/new", payload) == (
        '{"type":"mail.message/new","payload":{"when":"2024-05-06 07:08:09",'
        '"day":"2024-05-06","n":[1,2.5,null,true],"s":"é\\n\\"","3":"int key",'
        '"d":"1.50","b":"raw"}}')


# -- BusConnection -------------------------------------------------------------------------

def test_sends_are_inserted_at_commit_and_notified_once_after(
        bus_db, connections, listen, notifier, bus_rows):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    other = connections(bus_db)
    sendone(conn, ("res.partner", 7), "a", {"x": 1})
    sendone(conn, "broadcast", "b", [1])
    sendone(conn, ("res.partner", 7), "c", None)
    with conn.cursor() as cur:           # the application's own work in the same transaction
        cur.execute("SELECT 1")
    assert bus_rows(other) == []           # nothing before commit
    assert bus_rows(conn) == []            # not even for the transaction itself: queued
    conn.rollback()
    assert listener.collect(timeout=0.3) == []

    sendone(conn, ("res.partner", 7), "a", {"x": 1})
    sendone(conn, "broadcast", "b", [1])
    sendone(conn, ("res.partner", 7), "c", None)
    conn.commit()
    rows = bus_rows(other)
    assert [(c, m) for _, c, m in rows] == [
        (f'["{bus_db}","res.partner",7]', '{"type":"a","payload":{"x":1}}'),
        (f'["{bus_db}","broadcast"]', '{"type":"b","payload":[1]}'),
        (f'["{bus_db}","res.partner",7]', '{"type":"c","payload":null}'),
    ]
    assert rows[0][0] < rows[1][0] < rows[2][0]
    # One NOTIFY, de-duplicated channels in first-seen order.
    assert mine(listener.collect(timeout=1.0), bus_db) == [
        f'[["{bus_db}","res.partner",7],["{bus_db}","broadcast"]]']


def test_rollback_and_failed_with_block_send_nothing(bus_db, connections, listen, notifier, bus_rows):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    with pytest.raises(ZeroDivisionError):
        with conn:
            sendone(conn, "broadcast", "t", 1)
            1 / 0
    with conn:
        pass                               # the queue did not survive the rollback
    sendone(conn, "broadcast", "t", 2)
    conn.close()
    assert bus_rows(connections(bus_db)) == []
    assert mine(listener.collect(timeout=0.5), bus_db) == []


def test_with_block_commits_through_the_hooks(bus_db, connections, listen, notifier, bus_rows):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    with conn:
        sendmany(conn, [("broadcast", "t", 1), (("res.users", 2, "typing"), "u", 2)])
    assert len(bus_rows(connections(bus_db))) == 2
    assert mine(listener.collect(1), bus_db) == [
        f'[["{bus_db}","broadcast"],["{bus_db}","res.users",2,"typing"]]']


def test_a_failed_insert_keeps_the_transaction_for_the_caller_to_roll_back(
        bus_db, connections, notifier, bus_rows):
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    sendone(conn, "broadcast", "t", 1)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE bus_bus ADD CONSTRAINT short CHECK (length(message) < 5)")
    with pytest.raises(psycopg2.errors.CheckViolation):
        conn.commit()
    conn.rollback()
    conn.commit()                           # nothing left queued
    assert bus_rows(connections(bus_db)) == []


def test_invalid_channel_and_payload_fail_at_send_time(bus_db, connections):
    conn = connections(bus_db, bus=True)
    with pytest.raises(InvalidChannel):
        sendone(conn, ["otherdb", "broadcast"], "t", 1)
    with pytest.raises(TypeError):
        sendone(conn, "broadcast", "t", {"big": 2 ** 70})


def test_autocommit_connection_publishes_at_once(bus_db, connections, listen, notifier, bus_rows):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True, autocommit=True)
    conn.bus_notifier = notifier
    sendone(conn, "broadcast", "t", 1)
    assert len(bus_rows(connections(bus_db))) == 1
    assert mine(listener.collect(1), bus_db) == [f'[["{bus_db}","broadcast"]]']


# -- plain connections -----------------------------------------------------------------------

def test_plain_connection_needs_publishing(bus_db, connections):
    with pytest.raises(RuntimeError, match="publishing"):
        sendone(connections(bus_db), "broadcast", "t", 1)


def test_publishing_commits_then_notifies_or_rolls_back(bus_db, connections, listen, notifier,
                                                        bus_rows):
    listener = listen("postgres")
    conn = connections(bus_db)
    with publishing(conn, notifier):
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE app_data (v int)")
            cur.execute("INSERT INTO app_data VALUES (1)")
        sendone(conn, "broadcast", "t", {"v": 1})
        sendone(conn, "broadcast", "t", {"v": 2})
    assert mine(listener.collect(1), bus_db) == [f'[["{bus_db}","broadcast"]]']
    with pytest.raises(RuntimeError, match="boom"):
        with publishing(conn, notifier):
            with conn.cursor() as cur:
                cur.execute("INSERT INTO app_data VALUES (2)")
            sendone(conn, "broadcast", "t", {"v": 3})
            raise RuntimeError("boom")
    other = connections(bus_db)
    assert [m for _, _, m in bus_rows(other)] == ['{"type":"t","payload":{"v":1}}',
                                                  '{"type":"t","payload":{"v":2}}']
    with other.cursor() as cur:
        cur.execute("SELECT array_agg(v) FROM app_data")
        assert cur.fetchone()[0] == [1]
    assert mine(listener.collect(timeout=0.3), bus_db) == []
    with pytest.raises(RuntimeError, match="publishing"):
        sendone(conn, "broadcast", "t", 1)   # the context is over


def test_publishing_on_a_bus_connection(bus_db, connections, listen, notifier):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True)
    with publishing(conn, notifier):
        sendone(conn, "broadcast", "t", 1)
    assert mine(listener.collect(1), bus_db) == [f'[["{bus_db}","broadcast"]]']
    assert conn.bus_notifier is None


def test_imbus_database_is_the_application_database(bus_db, connections, listen, bus_rows):
    listener = listen(bus_db)
    notifier = Notifier(imbus_db_name=bus_db)
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    sendone(conn, "broadcast", "t", 1)
    conn.commit()
    assert listener.collect(1) == [f'[["{bus_db}","broadcast"]]']
    assert notifier.counters["connects"] == 0      # no extra connection was needed
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_1000_channels_in_one_transaction_are_split(bus_db, connections, listen, notifier, caplog):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    for i in range(1000):
        sendone(conn, ("res.partner", i), "t", i)
    with caplog.at_level(logging.INFO, logger="rtbus.bus.notify"):
        conn.commit()
    payloads = mine(listener.collect(timeout=1.0), bus_db)
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    heard = [c[2] for p in payloads for c in orjson.loads(p)]
    assert heard == list(range(1000))
    assert f"split into {len(payloads)} payloads" in caplog.text


def test_notifier_reconnects_after_its_connection_is_killed(bus_db, connections, listen, notifier):
    listener = listen("postgres")
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = notifier
    sendone(conn, "broadcast", "t", 1)
    conn.commit()
    assert len(mine(listener.collect(1), bus_db)) == 1
    (cached,) = notifier._conns.values()
    admin = connections("postgres", autocommit=True)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (cached.info.backend_pid,))
    sendone(conn, "broadcast", "t", 2)
    conn.commit()
    assert len(mine(listener.collect(1), bus_db)) == 1
    assert notifier.counters["connects"] == 2


def test_notify_failure_after_commit_is_logged_not_raised(bus_db, connections, bus_rows, caplog):
    conn = connections(bus_db, bus=True)
    conn.bus_notifier = Notifier(imbus_db_name="no_such_database_here")
    sendone(conn, "broadcast", "t", 1)
    with caplog.at_level(logging.ERROR, logger="rtbus.bus.publish"):
        conn.commit()
    assert "NOTIFY of 1 channel(s) failed" in caplog.text
    assert len(bus_rows(connections(bus_db))) == 1


# -- Publisher ---------------------------------------------------------------------------------

def test_publisher_with_a_pool_and_with_a_connection(pg_cluster, bus_db, connections, listen,
                                                     notifier, bus_rows):
    listener = listen("postgres")
    kwargs = pg_cluster.connect_kwargs(bus_db)
    del kwargs["dbname"]
    pool = ConnectionPool("test", 2, kwargs)
    try:
        ids = Publisher(notifier).publish(pool, bus_db, [("broadcast", "a", 1), ("x", "b", 2)])
    finally:
        pool.close_all()
    assert len(ids) == 2 and ids[0] < ids[1]
    assert mine(listener.collect(1), bus_db) == [f'[["{bus_db}","broadcast"],["{bus_db}","x"]]']
    conn = connections(bus_db)
    ids2 = bus_publish.publish(conn, bus_db, [("broadcast", "c", 3)], notifier=notifier)
    assert [r[0] for r in bus_rows(conn)] == ids + ids2
    assert Publisher(notifier).publish(conn, bus_db, []) == []
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(RuntimeError, match="own transaction"):
        Publisher(notifier).publish(conn, bus_db, [("broadcast", "c", 3)])
    conn.rollback()
    with pytest.raises(ValueError, match="not"):
        Publisher(notifier).publish(conn, "otherdb", [("broadcast", "c", 3)])


# -- the SQL function --------------------------------------------------------------------------

CASES = [
    ("broadcast", "t", {"id": 1, "text": "héllo \"q\" \\ \n\t\u0001"}),
    (("res.partner", 7), "mail.record/insert", {"a": [1, 2.5, None, True, False], "bb": {}}),
    (("res.partner", 7, "presence"), "presence", []),
    (["DB", "broadcast"], "x", "just a string"),
    # jsonb orders object keys by length then bytes: give them in that order here.
    ("café ☕", "y", {"num": -12, "nested": {"deep": [{"k": "v"}, []]}}),
    (("res.users", 3), "z", None),
]


@pytest.mark.parametrize("channel, kind, payload", CASES)
def test_sql_function_stores_byte_identical_text(bus_db, connections, notifier, bus_rows,
                                                 channel, kind, payload):
    if isinstance(channel, list):
        channel = [bus_db, *channel[1:]]
    python = connections(bus_db, bus=True)
    python.bus_notifier = notifier
    sendone(python, channel, kind, payload)
    python.commit()
    sql_conn = connections(bus_db)
    with sql_conn.cursor() as cur:
        cur.execute("SELECT rtbus_sendone(%s::jsonb, %s, %s::jsonb)",
                    (orjson.dumps(channel).decode(), kind, orjson.dumps(payload).decode()))
        new_id = cur.fetchone()[0]
    sql_conn.commit()
    (a_id, a_channel, a_message), (b_id, b_channel, b_message) = bus_rows(sql_conn)
    assert b_id == new_id
    assert (b_channel, b_message) == (a_channel, a_message)


def test_sql_function_notifies_in_its_own_database_at_commit_only(bus_db, connections, listen):
    listener = listen(bus_db)
    conn = connections(bus_db)
    with conn.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '1'),
                              rtbus_sendone('"broadcast"', 't', '2'),
                              rtbus_sendone('["res.partner", 7]', 't', '3')""")
    assert listener.collect(timeout=0.3) == []
    conn.commit()
    # PostgreSQL folds identical NOTIFYs of a transaction.
    assert listener.collect(2) == [f'[["{bus_db}","broadcast"]]',
                                   f'[["{bus_db}","res.partner",7]]']
    with conn.cursor() as cur:
        cur.execute("""SELECT rtbus_sendone('"broadcast"', 't', '4')""")
    conn.rollback()
    assert listener.collect(timeout=0.3) == []


@pytest.mark.parametrize("channel", ['["otherdb", "broadcast"]', '["res.partner", 7.5]',
                                     '["res.partner", 7.0]', '7', '{"a": 1}', '["a", "b", "c"]'])
def test_sql_function_rejects_bad_channels(bus_db, connections, channel):
    conn = connections(bus_db)
    with conn.cursor() as cur, pytest.raises(psycopg2.errors.InvalidParameterValue):
        cur.execute("SELECT rtbus_sendone(%s::jsonb, 't', '1')", (channel,))
