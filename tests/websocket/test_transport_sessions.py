"""Websocket connections of signed-in users: 4001 when the session ends, 1013 when the pool is dry."""

from __future__ import annotations

import json
import struct
import time

import pytest
import websocket

from rtbus.session import create_session, revoke_session


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


def connect(server, sid: str | None) -> websocket.WebSocket:
    cookie = f"session_id={sid}" if sid else None
    return websocket.create_connection(f"ws://127.0.0.1:{server.longpolling_port}/websocket",
                                       timeout=5, cookie=cookie)


def subscribe(ws, channels, last=10**9):
    ws.send(json.dumps({"event_name": "subscribe", "data": {"channels": channels, "last": last}}))


def close_code(ws, timeout: float = 5.0) -> int | None:
    ws.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]
    return None


def test_signed_in_user_receives_private_and_partner_channels(server, db, module_publish):
    sid = new_session(db, uid=8, partner_id=80)
    ws = connect(server, sid)
    try:
        subscribe(ws, ["team-secret-4f9a"])
        time.sleep(0.3)
        ids = module_publish("team-secret-4f9a") + module_publish(("res.partner", 80))
        got = []
        ws.settimeout(5)
        while len(got) < 2:
            got += [n["id"] for n in json.loads(ws.recv()) if n["id"] in ids]
        assert got == ids
    finally:
        ws.close()


def test_revoked_session_is_closed_4001_on_its_next_message(server, db):
    sid = new_session(db)
    ws = connect(server, sid)
    try:
        subscribe(ws, ["a"])
        time.sleep(0.3)
        revoke_session(db, sid)
        db.commit()
        # The server caches session checks (10 s by default); the revocation
        # reaches it through NOTIFY rtbus_session, within milliseconds.
        time.sleep(0.2)
        subscribe(ws, ["b"])
        assert close_code(ws) == 4001
    finally:
        ws.close()


def test_revoked_session_gets_4001_instead_of_a_pending_notification(server, db, module_publish):
    sid = new_session(db)
    ws = connect(server, sid)
    try:
        subscribe(ws, ["private-c1"])
        time.sleep(0.3)
        revoke_session(db, sid)
        db.commit()
        time.sleep(0.2)     # NOTIFY rtbus_session propagation, as above
        module_publish("private-c1", "must-not-arrive")
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
            subscribe(ws, ["x"])
        time.sleep(0.3)
        subscribe(clients[2], ["x"])
        assert close_code(clients[2]) == 1013
    finally:
        locker.rollback()
        locker.close()
        for ws in clients:
            ws.close()
    server.wait_log(r"closing with 1013")
    assert "closing with 1011" not in server.log()
