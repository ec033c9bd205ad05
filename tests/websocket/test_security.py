"""Who may listen to what, over real websockets: every attempt refused cleanly, the server alive."""

from __future__ import annotations

import json
import struct
import time

import pytest
import websocket

from rtbus.session import create_session, rotate_session, set_groups
from serverproc import health_ok


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="security", RTBUS_PUBLIC_CHANNELS="lobby")


@pytest.fixture(scope="module")
def db(module_conn):
    set_groups(module_conn, {100: ("Employee", []), 200: ("Manager", [100]), 300: ("Admin", [])})
    module_conn.commit()
    return module_conn


@pytest.fixture(scope="module")
def publish(module_publish):
    return lambda channel, kind="n": module_publish(channel, kind)[0]


def session(db, uid, partner_id, groups=()) -> str:
    sid = create_session(db, uid, partner_id, list(groups))
    db.commit()
    return sid


def connect(server, sid=None):
    return websocket.create_connection(f"ws://127.0.0.1:{server.longpolling_port}/websocket", timeout=5,
                                       cookie=f"session_id={sid}" if sid else None)


def subscribe(ws, channels):
    ws.send(json.dumps({"event_name": "subscribe", "data": {"channels": channels, "last": 10**9}}))
    time.sleep(0.3)


def received_ids(ws, wait: float = 1.0) -> set[int]:
    ids: set[int] = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        ws.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            ids.update(n["id"] for n in json.loads(ws.recv()))
        except websocket.WebSocketTimeoutException:
            break
    return ids


def close_code(ws):
    ws.settimeout(5)
    try:
        while True:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", frame.data[:2])[0]
    except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
        return None


def test_another_users_partner_channel_cannot_be_reached(server, db, publish, module_db):
    ws = connect(server, session(db, 1, 11))
    try:
        # Clients only send strings: a forged record channel is just an odd string.
        subscribe(ws, [f'["{module_db}","res.partner",22]', "res.partner,22", "res.partner_22"])
        other_partner = publish(("res.partner", 22))
        own_partner = publish(("res.partner", 11))
        got = received_ids(ws)
        assert own_partner in got and other_partner not in got
    finally:
        ws.close()


def test_group_channels_follow_implied_groups(server, db, publish):
    manager = connect(server, session(db, 2, 12, [200]))       # Manager implies Employee
    admin = connect(server, session(db, 3, 13, [300]))
    try:
        subscribe(manager, [])
        subscribe(admin, [])
        employees = publish(("res.groups", 100))
        got_manager, got_admin = received_ids(manager), received_ids(admin)
        assert employees in got_manager          # held only by implication
        assert employees not in got_admin
    finally:
        manager.close()
        admin.close()


def test_public_session_gets_only_broadcast_and_public_channels(server, publish):
    ws = connect(server)
    try:
        subscribe(ws, ["lobby", "private-room", "odoo-presence-res.partner_11"])
        lobby, private, everyone = publish("lobby"), publish("private-room"), publish("broadcast")
        got = received_ids(ws)
        assert {lobby, everyone} <= got and private not in got
    finally:
        ws.close()


@pytest.mark.parametrize("cookie", ["forged" + "x" * 58, "' OR 1=1 --", "a" * 5000])
def test_forged_cookies_are_closed_4001(server, cookie):
    ws = connect(server, cookie)
    try:
        assert close_code(ws) == 4001
    finally:
        ws.close()


def test_expired_and_rotated_cookies_are_closed_4001(server, db, publish):
    expired = session(db, 4, 14)
    with db.cursor() as cr:
        cr.execute("UPDATE rtbus_session SET expires = (now() at time zone 'utc') - interval '1 s' "
                   "WHERE sid = %s", (expired,))
    db.commit()
    old = session(db, 5, 15)
    new = rotate_session(db, old)
    db.commit()
    for sid in (expired, old):
        ws = connect(server, sid)
        try:
            assert close_code(ws) == 4001
        finally:
            ws.close()
    ws = connect(server, new)
    try:
        subscribe(ws, [])
        assert publish(("res.partner", 15)) in received_ids(ws)
    finally:
        ws.close()


@pytest.mark.parametrize("channels", [
    ['room"; DROP TABLE bus_bus; --'], ["it's", 'say "hi"', "\\\\"], ["x" * 5000], [1, 2], [None],
    [{"a": 1}], "not-a-list", [["res.partner", 11]], ["ok"] * 5000,
])
def test_hostile_channel_lists_are_refused_or_harmless(server, db, publish, channels):
    ws = connect(server, session(db, 6, 16))
    try:
        subscribe(ws, channels)
        subscribe(ws, ["fine"])                       # the connection is still usable
        fine = publish("fine")
        assert fine in received_ids(ws)
    finally:
        ws.close()
    assert health_ok(server.longpolling_port)
    conn_count = publish("broadcast")                # bus_bus still exists
    assert conn_count > 0
