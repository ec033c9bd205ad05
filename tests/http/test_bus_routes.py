"""The JSON-RPC bus routes on a real server, on both ports: peek, on_closed,
has_missed_notifications, get_autovacuum_info, health with db_server_status, the
removed update_bus_presence, malformed bodies, and a dead database."""

from __future__ import annotations

import http.client
import json

import orjson
import pytest

import pgcluster
from http_client import post_json
from rtbus.session import create_session, revoke_session, rotate_session
from serverproc import http_get, wait_until

PEEK = "/websocket/peek_notifications"
ROUTES = (PEEK, "/websocket/on_closed", "/bus/has_missed_notifications",
          "/bus/get_autovacuum_info")


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


# Session checks go to the database every time: the tests revoke and rotate.
NO_SESSION_CACHE = {"RTBUS_SESSION_CHECK_CACHE_SECONDS": "0"}


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="busroutes", **NO_SESSION_CACHE)


@pytest.fixture(params=["http", "longpolling"])
def port(request, server):
    """Every route is served by the HTTP workers and the evented process alike."""
    return server.http_port if request.param == "http" else server.longpolling_port


@pytest.fixture(scope="module")
def db(module_conn):
    return module_conn


@pytest.fixture(scope="module")
def publish(module_publish):
    return module_publish.one


def call(params=None, request_id=1) -> dict:
    return {"jsonrpc": "2.0", "method": "call", "params": params or {}, "id": request_id}


def rpc(port, path, params=None, sid=None):
    headers = {"Cookie": f"session_id={sid}"} if sid else None
    return post_json(port, path, call(params), headers)


def new_session(db, uid=11, partner_id=110) -> str:
    sid = create_session(db, uid, partner_id, [])
    db.commit()
    return sid


def assert_expired(status, body):
    assert status == 200
    assert body["error"]["code"] == 100
    assert body["error"]["data"]["name"] == "odoo.http.SessionExpiredException"


# -- peek_notifications ----------------------------------------------------------------------


def test_peek_returns_channels_and_notifications(port, bus_db, publish):
    before = publish("room", "before")
    after = publish("room", "after", {"k": "v"})
    status, _, body = rpc(port, PEEK, {"channels": ["room"], "last": before, "is_first_poll": True})
    assert status == 200, body
    result = body["result"]
    assert [bus_db, "room"] in result["channels"] and [bus_db, "broadcast"] in result["channels"]
    assert result["notifications"] == [{"id": after, "message": {"type": "after",
                                                                 "payload": {"k": "v"}}}]


def test_peek_last_zero_or_above_the_max_replays_the_backlog(port, publish):
    recent = publish("room", "recent")
    for last in (0, 10**9):
        status, _, body = rpc(port, PEEK, {"channels": ["room"], "last": last, "is_first_poll": True})
        assert status == 200
        assert recent in [n["id"] for n in body["result"]["notifications"]]


def test_peek_only_returns_the_sessions_channels(port, publish):
    secret = publish(("res.partner", 999), "secret")
    status, _, body = rpc(port, PEEK, {"channels": ["room"], "last": secret - 1, "is_first_poll": True})
    assert status == 200 and body["result"]["notifications"] == []


def test_peek_session_rules(port, db, publish):
    sid = new_session(db, 12, 120)
    # A later poll of a session never marked by a first poll: signed in meanwhile.
    assert_expired(*rpc(port, PEEK, {"channels": [], "last": 0}, sid=sid)[::2])
    status, _, body = rpc(port, PEEK, {"channels": [], "last": 0, "is_first_poll": True}, sid=sid)
    assert status == 200 and [sid_db for sid_db in body["result"]["channels"]
                              if sid_db[1:] == ["res.partner", 120]]
    own = publish(("res.partner", 120), "mine")
    status, _, body = rpc(port, PEEK, {"channels": [], "last": own - 1}, sid=sid)
    assert status == 200 and [n["id"] for n in body["result"]["notifications"]] == [own]
    # Rotated (a login): the old cookie is expired, the new one carries the mark.
    new_sid = rotate_session(db, sid)
    db.commit()
    assert_expired(*rpc(port, PEEK, {"channels": [], "last": 0}, sid=sid)[::2])
    assert rpc(port, PEEK, {"channels": [], "last": 0}, sid=new_sid)[0] == 200
    # Revoked (a logout).
    revoke_session(db, new_sid)
    db.commit()
    assert_expired(*rpc(port, PEEK, {"channels": [], "last": 0}, sid=new_sid)[::2])


@pytest.mark.parametrize("params, fragment", [
    ({"channels": [1], "last": 0, "is_first_poll": True}, "only string channels"),
    ({"channels": "room", "last": 0, "is_first_poll": True}, "channels must be a list"),
    ({"channels": [], "last": -5}, "last must be"),
    ({"channels": [], "last": 0, "is_first_poll": "yes"}, "is_first_poll"),
    ({"last": 0}, "missing parameter(s): channels"),
])
def test_peek_invalid_params(port, params, fragment):
    status, _, body = rpc(port, PEEK, params)
    assert status == 200 and body["error"]["code"] == -32602
    assert fragment in body["error"]["data"]["message"]


# -- on_closed -------------------------------------------------------------------------------


def presence_status(db, uid):
    with db.cursor() as cur:
        cur.execute("SELECT status FROM rtbus_presence WHERE user_id = %s", (uid,))
        row = cur.fetchone()
    db.rollback()
    return row[0] if row else None


def test_on_closed_sets_the_user_offline(port, db, server):
    uid = 13 if port == server.http_port else 14
    sid = new_session(db, uid, uid * 10)
    # Online through a poll's presence option (on the evented process).
    status, _, body = post_json(server.longpolling_port, "/longpolling/poll", call(
        {"channels": [f"odoo-presence-res.partner_{uid * 10}"], "last": 0,
         "options": {"bus_inactivity": 0}}), {"Cookie": f"session_id={sid}"})
    assert status == 200, body
    assert presence_status(db, uid) == "online"
    status, _, body = rpc(port, "/websocket/on_closed", sid=sid)
    assert status == 200 and body["result"] is None
    assert presence_status(db, uid) == "offline"


def test_on_closed_without_or_with_a_stale_session_does_nothing(port, db):
    assert rpc(port, "/websocket/on_closed")[2] == {"jsonrpc": "2.0", "id": 1, "result": None}
    sid = new_session(db, 15, 150)
    revoke_session(db, sid)
    db.commit()
    status, _, body = rpc(port, "/websocket/on_closed", sid=sid)
    assert status == 200 and body["result"] is None


# -- has_missed_notifications, get_autovacuum_info -------------------------------------------


def test_has_missed_notifications(port, db, publish):
    kept, gone = publish("room", "kept"), publish("room", "gone")
    with db.cursor() as cur:
        cur.execute("DELETE FROM bus_bus WHERE id = %s", (gone,))
    db.commit()
    route = "/bus/has_missed_notifications"
    assert rpc(port, route, {"last_notification_id": kept})[2]["result"] is False
    assert rpc(port, route, {"last_notification_id": gone})[2]["result"] is True
    for bad in ("7", -1, None, True):
        body = rpc(port, route, {"last_notification_id": bad})[2]
        assert body["error"]["code"] == -32602
    assert rpc(port, route, {})[2]["error"]["code"] == -32602


def test_get_autovacuum_info(port, db):
    route = "/bus/get_autovacuum_info"
    with db.cursor() as cur:
        cur.execute("DELETE FROM rtbus_cron WHERE name = 'bus_gc'")
    db.commit()
    assert rpc(port, route)[2]["result"] == {"lastcall": None, "nextcall": None}
    with db.cursor() as cur:
        cur.execute("INSERT INTO rtbus_cron (name, interval_seconds, lastcall, nextcall)"
                    " VALUES ('bus_gc', 3600, '2026-01-02 03:04:05.678', '2026-01-02 04:04:05')")
    db.commit()
    assert rpc(port, route)[2]["result"] == {"lastcall": "2026-01-02 03:04:05",
                                             "nextcall": "2026-01-02 04:04:05"}
    with db.cursor() as cur:
        cur.execute("UPDATE rtbus_cron SET lastcall = NULL WHERE name = 'bus_gc'")
    db.commit()
    assert rpc(port, route)[2]["result"] == {"lastcall": None, "nextcall": "2026-01-02 04:04:05"}


# -- health, removed route, malformed bodies ------------------------------------------------


def test_health_with_db_server_status(port):
    status, headers, body = http_get(port, "/websocket/health?db_server_status=1")
    assert status == 200
    assert json.loads(body) == {"status": "pass", "db_server_status": True}
    assert headers["Cache-Control"] == "no-store" and "Set-Cookie" not in headers
    status, _, body = http_get(port, "/websocket/health?db_server_status=0")
    assert (status, json.loads(body)) == (200, {"status": "pass"})


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_update_bus_presence_is_gone(port, method):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = orjson.dumps(call({"inactivity_period": 0})) if method == "POST" else None
        conn.request(method, "/websocket/update_bus_presence", body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()
    assert status == 404
    error = json.loads(raw)["error"]
    assert error["code"] == 404 and "update_presence" in error["data"]["message"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("payload, status, code", [
    (b"{not json", 400, -32700),
    (b"", 400, -32700),
    (b'"a string"', 400, -32600),
    (b'{"jsonrpc": "2.0", "params": [1], "id": 3}', 400, -32600),
    (orjson.dumps(call({"bogus": 1})), 200, -32602),
])
def test_malformed_bodies_get_jsonrpc_errors(port, route, payload, status, code):
    got, _, body = post_json(port, route, payload)
    assert got == status, body
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == code
    assert body["error"]["data"]["message"]


@pytest.mark.parametrize("route", ROUTES)
def test_get_on_jsonrpc_routes_is_405(port, route):
    status, headers, _ = http_get(port, route)
    assert status == 405 and headers["Allow"] == "POST"


def test_unknown_database_is_not_found_and_names_no_database(port, bus_db):
    status, _, body = post_json(port, "/bus/get_autovacuum_info?db=elsewhere", call())
    assert status == 404 and body["error"]["code"] == 404
    assert body["error"]["data"]["name"] == "werkzeug.exceptions.NotFound"
    assert body["error"]["data"]["message"] == "this server does not serve the database the request names"
    assert bus_db not in orjson.dumps(body).decode()


# -- a dead database ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crash_db(crash_cluster):
    return pgcluster.create_schema_db(crash_cluster)


@pytest.mark.timeout(120)
def test_dead_database_gives_503_on_every_route_then_recovers(crash_cluster, crash_db, module_servers):
    server = module_servers(name="crashroutes", cluster=crash_cluster, db=crash_db, **NO_SESSION_CACHE)
    ports = (server.http_port, server.longpolling_port)
    calls = [(PEEK, {"channels": [], "last": 0, "is_first_poll": True}), ("/bus/has_missed_notifications",
                                                    {"last_notification_id": 1}),
             ("/bus/get_autovacuum_info", {})]
    try:
        crash_cluster.stop(mode="immediate")
        try:
            for port in ports:
                for route, params in calls:
                    status, headers, body = rpc(port, route, params)
                    assert status == 503, (port, route, body)
                    assert int(headers["Retry-After"]) > 0
                    assert body["jsonrpc"] == "2.0" and body["error"]["data"]["message"]
                status, _, body = http_get(port, "/websocket/health?db_server_status=1")
                assert status == 503
                assert json.loads(body) == {"status": "fail", "db_server_status": False}
                assert http_get(port, "/websocket/health")[0] == 200
        finally:
            crash_cluster.start()
        for port in ports:
            first_poll = {"channels": [], "last": 0, "is_first_poll": True}
            wait_until(lambda: rpc(port, PEEK, first_poll)[0] == 200, 30,
                       interval=0.3, message="peek to recover")
            assert http_get(port, "/websocket/health?db_server_status=1")[0] == 200
        assert "Traceback" not in server.log()
    finally:
        server.stop()
