"""The channel rules on real servers, through the three transports that apply them:
`/websocket` subscribe, `/longpolling/poll` and `/websocket/peek_notifications`.

The default server runs Odoo 19's rule (any string channel, for every session, cookie-less
included); the locked one sets `public_channels` and `channel_allowlist`. Every check
publishes what must not arrive *before* a marker that must, then waits for the marker:
notifications reach a client in id order, so what did not come with or before the marker
was not delivered. No fixed sleep anywhere.
"""

from __future__ import annotations

import json

import pytest
import websocket

from http_client import post_json
from rtbus.session import create_session
from serverproc import health_ok
from wsclient import RawWebsocket

PEEK = "/websocket/peek_notifications"
POLL = "/longpolling/poll"
TRANSPORTS = ("websocket", "longpolling", "peek")
LOCKDOWN = {"RTBUS_PUBLIC_CHANNELS": "kiosk.*,lobby", "RTBUS_CHANNEL_ALLOWLIST": "kiosk.*,lobby,app.*"}


@pytest.fixture(scope="module")
def default_server(module_servers):
    return module_servers(name="rules-default")


@pytest.fixture(scope="module")
def locked_server(module_servers):
    return module_servers(name="rules-locked", **LOCKDOWN)


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


@pytest.fixture(scope="module")
def publish(module_publish):
    return lambda channel, kind="n": module_publish(channel, kind)[0]


@pytest.fixture(scope="module")
def user_sid(module_conn):
    sid = create_session(module_conn, 41, 410, [])
    module_conn.commit()
    return sid


def call(params) -> dict:
    return {"jsonrpc": "2.0", "method": "call", "params": params, "id": 1}


def cookie(sid):
    return {"Cookie": f"session_id={sid}"} if sid else None


def received(server, transport: str, channels: list[str], last: int, marker: int,
             sid: str | None = None) -> list[int]:
    """The ids `transport` hands a client asking for `channels` after `last`, up to the
    `marker` id (published already, on a channel the client may have)."""
    if transport == "websocket":
        return _websocket_ids(server, channels, last, marker, sid)
    if transport == "longpolling":
        status, _, body = post_json(server.longpolling_port, POLL,
                                    call({"channels": channels, "last": last}), cookie(sid))
        assert status == 200, body
        return [n["id"] for n in body["result"]]
    status, _, body = post_json(server.http_port, PEEK, call(
        {"channels": channels, "last": last, "is_first_poll": True}), cookie(sid))
    assert status == 200, body
    return [n["id"] for n in body["result"]["notifications"]]


def _websocket_ids(server, channels, last, marker, sid) -> list[int]:
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.longpolling_port}/websocket",
                                     timeout=10, cookie=f"session_id={sid}" if sid else None)
    try:
        ws.send(json.dumps({"event_name": "subscribe", "data": {"channels": channels, "last": last}}))
        ids: list[int] = []
        while marker not in ids:       # bounded: recv times out after 10 s
            ids.extend(n["id"] for n in json.loads(ws.recv()))
        return ids
    finally:
        ws.close()


# -- Odoo's default: every session listens to the string channels it asks for -------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cookie_less_client_receives_its_custom_channel(default_server, publish, transport):
    baseline = publish("unrelated")
    wanted = publish(f"widget-{transport}-c0ffee")
    everyone = publish("broadcast")
    got = received(default_server, transport, [f"widget-{transport}-c0ffee"], baseline, everyone)
    assert wanted in got and everyone in got


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forged_record_channel_strings_get_nothing(default_server, module_db, publish, user_sid,
                                                   transport):
    forged = [f'["{module_db}","res.partner",22]', f'["{module_db}","res.groups",5]',
              f'["{module_db}","res.partner",22,"presence"]', "res.partner,22", "res.partner_22",
              'res.partner", 22', "odoo-presence-res.partner_22-" + "a" * 64 + "o0x1"]
    for sid in (None, user_sid):
        baseline = publish("unrelated")
        secrets = [publish(("res.partner", 22)), publish(("res.groups", 5)),
                   publish(("res.partner", 22, "presence"))]
        marker = publish("room-marker")
        got = received(default_server, transport, [*forged, "room-marker"], baseline, marker, sid)
        assert marker in got and not set(secrets) & set(got), (sid is not None, got)


def test_the_default_policy_is_logged_at_start(default_server):
    default_server.wait_log(r"channel policy, Odoo 19's rule: sessions without a user may listen "
                            r"to any string channel \(public_channels = \*\)")


# -- lock-down: patterns drop names, for the right sessions --------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lockdown_drops_the_right_names_for_each_session(locked_server, publish, user_sid, transport):
    asked = ["kiosk.hall", "lobby", "app.news", "other"]
    expected = {None: {"kiosk.hall", "lobby"}, user_sid: {"kiosk.hall", "lobby", "app.news"}}
    for sid, allowed in expected.items():
        baseline = publish("unrelated")
        ids = {name: publish(name) for name in asked}
        marker = publish("kiosk.marker")
        got = set(received(locked_server, transport, [*asked, "kiosk.marker"], baseline, marker, sid))
        assert {name for name, notification in ids.items() if notification in got} == allowed, sid
    assert health_ok(locked_server.longpolling_port)


def test_the_lockdown_is_logged_at_start(locked_server):
    locked_server.wait_log(r"channel policy, locked down: sessions without a user may listen to "
                           r"names matching kiosk\.\*, lobby \(public_channels\); every session to "
                           r"only names matching kiosk\.\*, lobby, app\.\* \(channel_allowlist\)")


# -- the 101 never carries a cookie --------------------------------------------------------------


def test_the_101_never_carries_set_cookie(default_server, user_sid):
    port = default_server.longpolling_port
    stale = "0" * 64
    for headers in ({}, {"Cookie": f"session_id={user_sid}"}, {"Cookie": f"session_id={stale}"},
                    {"Cookie": f"session_id={user_sid}", "Origin": "http://elsewhere.example"}):
        raw = RawWebsocket(port, headers=headers)
        try:
            assert raw.status == 101, (headers, raw.body)
            assert "set-cookie" not in raw.response_headers, headers
        finally:
            raw.close()


# -- peek on a session that never did a first poll ------------------------------------------------


def assert_session_expired(status, body):
    """Odoo's answer to SessionExpiredException on a JSON-RPC route."""
    assert status == 200
    error = body["error"]
    assert error["code"] == 100 and error["message"] == "Odoo Session Expired"
    assert error["data"]["name"] == "odoo.http.SessionExpiredException"
    assert set(error["data"]) == {"name", "message", "arguments", "context", "debug"}
    assert "result" not in body


@pytest.mark.parametrize("port_kind", ["http", "longpolling"])
def test_peek_without_a_first_poll_is_session_expired(default_server, module_conn, port_kind):
    port = default_server.http_port if port_kind == "http" else default_server.longpolling_port
    fresh = create_session(module_conn, None, None, [])       # a visitor's session, never polled
    module_conn.commit()
    for sid in (None, fresh):
        for params in ({"channels": ["x"], "last": 0}, {"channels": ["x"], "last": 0, "is_first_poll": False}):
            assert_session_expired(*post_json(port, PEEK, call(params), cookie(sid))[::2])
    for sid in (None, fresh):
        status, _, body = post_json(port, PEEK, call({"channels": ["x"], "last": 0, "is_first_poll": True}),
                                    cookie(sid))
        assert status == 200 and "notifications" in body["result"], body
    # The fresh session now carries the mark; the cookie-less visitor has nothing to carry it.
    status, _, body = post_json(port, PEEK, call({"channels": ["x"], "last": 0}), cookie(fresh))
    assert status == 200 and "result" in body, body
    assert_session_expired(*post_json(port, PEEK, call({"channels": ["x"], "last": 0}))[::2])
