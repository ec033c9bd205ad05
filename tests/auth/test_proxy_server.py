"""The authorization proxy on real servers, against a real small HTTP application
(tests/authapp.py) on a loopback port: identity, granted and refused channels on the
three transports, the cache and single-flight, a slow, failing or vanished
application, forwarded events and revocation by NOTIFY.

Negative checks publish what must not arrive before a marker that must: notifications
arrive in id order, so what did not come with the marker was not delivered.
"""

from __future__ import annotations

import time

import pytest

import busclient
from authapp import SECRET, AuthApp
from http_client import post_json
from serverproc import health_ok
from waiting import metric, wait_metric, wait_until

POLL = "/longpolling/poll"
PEEK = "/websocket/peek_notifications"
USER_SID = "user-session-0001-aaaaaaaa"
OTHER_SID = "user-session-0002-bbbbbbbb"


def proxy_env(app: AuthApp, **extra) -> dict:
    return {"RTBUS_AUTH_PROXY_URL": app.url, "RTBUS_AUTH_PROXY_SECRET": SECRET,
            "RTBUS_AUTH_PROXY_TIMEOUT": "1", **extra}


@pytest.fixture(scope="module")
def app():
    application = AuthApp()
    application.sessions[USER_SID] = (7, 70)
    application.sessions[OTHER_SID] = (8, 80)
    yield application
    application.stop()


@pytest.fixture(scope="module")
def server(module_servers, app):
    return module_servers(name="proxy", **proxy_env(app))


def call(params) -> dict:
    return {"jsonrpc": "2.0", "method": "call", "params": params, "id": 1}


def cookie(sid):
    return {"Cookie": f"session_id={sid}"}


def test_websocket_hears_what_the_application_grants(server, app, publish):
    ws = busclient.connect(server.longpolling_port, sid=USER_SID)
    busclient.subscribe(ws, ["shop.a", "secret.b"])
    refused = publish.one("secret.b")
    granted = publish.one("shop.a")
    partner = publish.one(("res.partner", 70))
    assert busclient.received_before(ws, partner) == {granted, partner}     # not `refused`
    ws.close()


def test_a_session_the_application_refuses_is_closed_4001(server, app):
    ws = busclient.connect(server.longpolling_port, sid="ended-session-0000-zzzz")
    busclient.subscribe(ws, ["shop.a"], wait=False)
    assert busclient.close_code(ws) == 4001


def test_a_guest_cookie_is_forwarded_and_keys_the_cache(server, app, publish):
    """auth_proxy_cookies (default dgid, Odoo's guest token) reach the application, and
    two guests of the same (absent) session get their own answers."""
    ws = busclient.connect(server.longpolling_port, cookie="dgid=guest-one; other=not-sent")
    busclient.subscribe(ws, ["lobby"])
    other = busclient.connect(server.longpolling_port, cookie="dgid=guest-two")
    busclient.subscribe(other, ["lobby"])
    for_two = publish.one("guest.guest-two")
    for_one = publish.one("guest.guest-one")
    assert busclient.received_before(ws, for_one) == {for_one}
    assert busclient.received_before(other, for_two) == {for_two}
    assert {"dgid": "guest-one"} in [r["cookies"] for r in app.requests]
    busclient.send_event(ws, "update_presence", {"inactivity_period": 50})
    busclient.barrier(ws)
    ws.close()
    wait_until(lambda: any(e["type"] == "update_presence" and e["cookies"] == {"dgid": "guest-one"}
                           and e["inactivity_period"] == 50 for e in app.events),
               10, message="the guest's presence update forwarded")
    wait_until(lambda: any(e["type"] == "closed" and e["cookies"] == {"dgid": "guest-one"}
                           for e in app.events), 10, message="the guest's close forwarded")
    other.close()


def test_long_poll_and_peek_ask_the_application(server, app, publish):
    refused = publish.one("secret.lp")
    granted = publish.one("shop.lp")
    status, _, body = post_json(server.longpolling_port, POLL,
                                call({"channels": ["shop.lp", "secret.lp"], "last": refused - 1}),
                                cookie(USER_SID))
    assert status == 200, body
    assert [n["id"] for n in body["result"]] == [granted]
    status, _, body = post_json(server.http_port, PEEK, call(
        {"channels": ["shop.lp", "secret.lp"], "last": refused - 1, "is_first_poll": True}),
        cookie(OTHER_SID))
    assert status == 200, body
    assert [n["id"] for n in body["result"]["notifications"]] == [granted]
    assert ["proxy-db-anchor", "res.partner", 80] not in body["result"]["channels"]
    assert [body["result"]["channels"][0][0], "res.partner", 80] in body["result"]["channels"]
    status, _, body = post_json(server.http_port, PEEK, call(
        {"channels": ["shop.lp"], "last": 0, "is_first_poll": True}), cookie("no-such-session-9999"))
    assert body["error"]["code"] == 100


def test_answers_are_cached_per_session_and_channels(server, app):
    sid = "cache-session-0003-cccccccc"
    app.sessions[sid] = (9, 90)
    for _ in range(3):
        ws = busclient.connect(server.longpolling_port, sid=sid)
        busclient.subscribe(ws, ["cache.a", "cache.b"])
        ws.close()
    assert app.calls[sid] == 1
    ws = busclient.connect(server.longpolling_port, sid=sid)
    busclient.subscribe(ws, ["cache.b", "cache.a", "cache.a"])     # the same list, reordered
    busclient.subscribe(ws, ["cache.c"])
    ws.close()
    assert app.calls[sid] == 2
    assert metric(server.longpolling_port, "rtbus_auth_proxy_cache_total", result="hit") >= 3


STORM = 1000     # sockets of one session reconnecting at once


def test_reconnects_of_one_session_make_one_call(server, app, publish):
    """Single-flight: while the first call is held by the application, every other
    subscription of the session waits for it instead of calling too: a thousand
    reconnects, one call."""
    sid = "storm-session-0004-dddddddd"
    app.sessions[sid] = (10, 100)
    app.behaviour[sid] = "gate"
    app.gate.clear()
    joined_before = metric(server.longpolling_port, "rtbus_auth_proxy_cache_total", result="joined")
    sockets = [busclient.connect(server.longpolling_port, sid=sid, timeout=30) for _ in range(STORM)]
    for ws in sockets:
        busclient.subscribe(ws, ["storm"], wait=False)
    wait_until(lambda: app.calls[sid] >= 1, 10, message="the first call reached the application")
    wait_metric(server.longpolling_port, "rtbus_auth_proxy_cache_total", joined_before + STORM - 1,
                timeout=60, result="joined")
    app.gate.set()
    for ws in sockets:
        busclient.barrier(ws, timeout=30)
    marker = publish.one("storm")
    for ws in sockets:
        assert marker in busclient.received_before(ws, marker, timeout=30)
        ws.close()
    assert app.calls[sid] == 1
    del app.behaviour[sid]


@pytest.mark.parametrize("how", ["slow", "error"])
def test_a_slow_or_failing_application_is_a_clean_refusal(server, app, how):
    sid = f"{how}-session-0005-eeeeeeee"
    app.sessions[sid] = (11, 110)
    app.behaviour[sid] = how
    app.delay = 3.0                              # the server waits 1 s (RTBUS_AUTH_PROXY_TIMEOUT)
    started = time.monotonic()
    ws = busclient.connect(server.longpolling_port, sid=sid)
    busclient.subscribe(ws, ["x"], wait=False)
    assert busclient.close_code(ws, timeout=5) == 1013
    assert time.monotonic() - started < 2.9
    status, headers, body = post_json(server.longpolling_port, POLL,
                                      call({"channels": ["x"], "last": 0}), cookie(sid))
    assert status == 503 and body["error"]["data"]["name"] == "rtbus.errors.AuthProxyUnavailable"
    assert health_ok(server.longpolling_port)
    assert metric(server.longpolling_port, "rtbus_auth_proxy_errors_total") >= 1


def test_presence_and_closes_are_forwarded(server, app):
    ws = busclient.connect(server.longpolling_port, sid=USER_SID)
    busclient.subscribe(ws, ["presence.test"])
    busclient.send_event(ws, "update_presence", {"inactivity_period": 1234})
    busclient.barrier(ws)
    ws.close()

    def forwarded(kind):
        return [e for e in app.events if e["type"] == kind and e["sid"] == USER_SID]

    wait_until(lambda: forwarded("update_presence") and forwarded("closed"), 10,
               message="the update and the close forwarded")
    update = forwarded("update_presence")[-1]
    assert update["uid"] == 7 and update["inactivity_period"] == 1234
    assert app.bad_signatures == 0


def test_revocation_by_notify_closes_4001_within_a_second(server, app, module_conn, publish):
    sid = "revoked-session-0006-ffffffff"
    # Sharing the 16 characters the NOTIFY names (Odoo 19's soft rotation keeps them):
    # answered after the end, it is served.
    rotated = sid[:16] + "-rotated-gggggggg"
    app.sessions[sid] = (12, 120)
    app.sessions[rotated] = (12, 120)
    ws = busclient.connect(server.longpolling_port, sid=sid)
    busclient.subscribe(ws, ["revoke.me"])
    with module_conn.cursor() as cur:
        cur.execute("SELECT pg_notify('rtbus_session', left(%s, 16))", (sid,))
    module_conn.commit()
    started = time.monotonic()
    assert busclient.close_code(ws, timeout=1.0) == 4001
    assert time.monotonic() - started < 1.0
    # The ended session is refused without asking the application again...
    calls = app.calls[sid]
    ws = busclient.connect(server.longpolling_port, sid=sid)
    assert busclient.close_code(ws) == 4001
    assert app.calls[sid] == calls
    # ...while the session rotated in is asked for, and hears.
    fresh = busclient.connect(server.longpolling_port, sid=rotated)
    busclient.subscribe(fresh, ["revoke.me"])
    marker = publish.one("revoke.me")
    assert marker in busclient.received_before(fresh, marker)
    fresh.close()


def test_application_down_keeps_open_sockets(module_servers, publish):
    application = AuthApp()
    application.sessions[USER_SID] = (7, 70)
    down = module_servers(name="proxy-down", **proxy_env(application))
    ws = busclient.connect(down.longpolling_port, sid=USER_SID)
    busclient.subscribe(ws, ["kept"])
    application.stop()
    marker = publish.one("kept")
    assert marker in busclient.received_before(ws, marker)
    other = busclient.connect(down.longpolling_port, sid=OTHER_SID)
    busclient.subscribe(other, ["kept"], wait=False)
    assert busclient.close_code(other) == 1013
    assert health_ok(down.longpolling_port)
    second = publish.one("kept")
    assert second in busclient.received_before(ws, second)
    ws.close()
