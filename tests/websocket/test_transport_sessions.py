"""Websocket connections of signed-in users: 4001 when the session ends, 1013 when the pool is dry."""

from __future__ import annotations

import json
import struct

import pytest
import websocket

import busclient
from busclient import close_code, receive_ids
from rtbus.session import create_session, revoke_session
from waiting import wait_until


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


@pytest.fixture(scope="module")
def server(module_servers):
    # The default session cache (10 s): revocations must still act at once,
    # through NOTIFY rtbus_session.
    return module_servers(name="sessions")


@pytest.fixture
def db(pg_cluster, bus_db):
    conn = pg_cluster.connect(bus_db)
    yield conn
    conn.close()


def new_session(db, uid: int = 7, partner_id: int = 70) -> str:
    sid = create_session(db, uid, partner_id, [])
    db.commit()
    return sid


def connect(server, sid: str | None):
    return busclient.connect(server.longpolling_port, sid=sid)


def subscribe(ws, channels, last=10**9, wait=True):
    busclient.subscribe(ws, channels, last=last, wait=wait)


def sql_publish(db, channel: str, notification_type: str = "n") -> int:
    """Publish with the SQL function: its NOTIFY imbus goes out in this database, on the
    dispatcher link that also carries NOTIFY rtbus_session, so after a revocation
    committed before it (PostgreSQL delivers a listener's NOTIFYs in commit order, and the
    dispatcher applies them in that order before it fetches)."""
    with db.cursor() as cr:
        cr.execute("SELECT rtbus_sendone(%s::jsonb, %s, 'null')", (json.dumps(channel), notification_type))
        (notification_id,) = cr.fetchone()
    db.commit()
    return notification_id


def revoke_and_wait(server, db, sid: str) -> None:
    """Revoke `sid`, and wait until the server took the revocation in: a marker published
    after it, the same way, reached a watcher of another session."""
    revoke_session(db, sid)
    db.commit()
    watcher = connect(server, new_session(db, uid=9, partner_id=90))
    try:
        subscribe(watcher, ["revocation-marker"])
        marker = sql_publish(db, "revocation-marker")
        assert receive_ids(watcher, [marker]) == [marker]
    finally:
        watcher.close()


def blocked_on_lock(cluster, dbname: str) -> int:
    """Backends in `dbname` (rtbus's: the test's own never wait) waiting for a lock."""
    conn = cluster.connect("postgres")
    try:
        with conn.cursor() as cr:
            cr.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                       " AND wait_event_type = 'Lock'", (dbname,))
            return cr.fetchone()[0]
    finally:
        conn.close()


def test_signed_in_user_receives_private_and_partner_channels(server, db, module_publish):
    sid = new_session(db, uid=8, partner_id=80)
    ws = connect(server, sid)
    try:
        subscribe(ws, ["team-secret-4f9a"])
        ids = module_publish("team-secret-4f9a") + module_publish(("res.partner", 80))
        assert receive_ids(ws, ids) == ids
    finally:
        ws.close()


def test_revoked_session_is_closed_4001_on_its_next_message(server, db):
    sid = new_session(db)
    ws = connect(server, sid)
    try:
        subscribe(ws, ["a"])
        # The server caches session checks (10 s by default); the revocation
        # reaches it through NOTIFY rtbus_session, within milliseconds.
        revoke_and_wait(server, db, sid)
        subscribe(ws, ["b"], wait=False)
        assert close_code(ws) == 4001
    finally:
        ws.close()


def test_revoked_session_gets_4001_instead_of_a_pending_notification(server, db, module_publish):
    sid = new_session(db)
    ws = connect(server, sid)
    try:
        subscribe(ws, ["private-c1"])
        revoke_session(db, sid)
        db.commit()
        sql_publish(db, "private-c1", "must-not-arrive")     # heard after the revocation
        ws.settimeout(5)
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE, frame.data
        assert struct.unpack("!H", frame.data[:2])[0] == 4001
    finally:
        ws.close()


def test_stale_cookie_is_accepted_then_closed_4001(server, db):
    sid = new_session(db)
    revoke_session(db, sid)
    db.commit()
    ws = connect(server, sid)
    try:
        assert close_code(ws) == 4001
    finally:
        ws.close()


def test_exhausted_pool_closes_with_1013_not_1011(start_server, server_env, db, pg_cluster, bus_db):
    # Two session checks block on a lock and hold both connections of the
    # gevent pool (db_maxconn_gevent = 2); a third connection's check cannot
    # borrow one within db_pool_timeout.
    server = start_server("--workers=1", "--max-cron-threads=0", env=dict(
        server_env, RTBUS_DB_NAME=bus_db, RTBUS_SESSION_CHECK_CACHE_SECONDS="0",
        RTBUS_DB_MAXCONN_GEVENT="2", RTBUS_DB_POOL_TIMEOUT="0.3"))
    sids = [new_session(db) for _ in range(3)]
    clients = [connect(server, sid) for sid in sids]
    locker = pg_cluster.connect(bus_db)
    try:
        with locker.cursor() as cr:
            cr.execute("LOCK TABLE rtbus_session IN ACCESS EXCLUSIVE MODE")
        for ws in clients[:2]:
            subscribe(ws, ["x"], wait=False)
        # Both checks hold their pooled connection, blocked on the lock.
        wait_until(lambda: blocked_on_lock(pg_cluster, bus_db) == 2, 10,
                   message="two session checks waiting for the lock")
        subscribe(clients[2], ["x"], wait=False)
        assert close_code(clients[2]) == 1013
    finally:
        locker.rollback()
        locker.close()
        for ws in clients:
            ws.close()
    server.wait_log(r"closing with 1013")
    assert "closing with 1011" not in server.log()
