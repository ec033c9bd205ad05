"""/bus/publish on a real server: API key, JSON-RPC errors, rows and NOTIFY after commit."""

from __future__ import annotations

import http.client
import json

import orjson
import pytest

from buslisten import ImbusListener

API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="publish", RTBUS_BUS_API_KEY=API_KEY)


def post(port: int, body, headers: dict | None = None, method: str = "POST", path: str = "/bus/publish"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        conn.request(method, path, body=data if method == "POST" else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        conn.close()


def call(params, request_id=1):
    return {"jsonrpc": "2.0", "method": "call", "params": params, "id": request_id}


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_publish_inserts_the_row_and_notifies_after_commit(server, pg_cluster, bus_db):
    listener = ImbusListener(pg_cluster, "postgres")
    try:
        status, _, body = post(server.http_port, call({"channel": "broadcast", "type": "greeting",
                                                        "payload": {"text": "héllo"}}), AUTH)
        assert status == 200, body
        (notification_id,) = body["result"]["ids"]
        assert body["id"] == 1
        assert listener.wait(1) == [[[bus_db, "broadcast"]]]
    finally:
        listener.close()
    conn = pg_cluster.connect(bus_db)
    try:
        with conn.cursor() as cr:
            cr.execute("SELECT channel, message FROM bus_bus WHERE id = %s", (notification_id,))
            channel, message = cr.fetchone()
    finally:
        conn.close()
    assert channel == f'["{bus_db}","broadcast"]'
    assert message == '{"type":"greeting","payload":{"text":"héllo"}}'


def test_many_notifications_in_one_call_give_one_notify(server, pg_cluster, bus_db):
    listener = ImbusListener(pg_cluster, "postgres")
    try:
        status, _, body = post(server.http_port, call({"notifications": [
            ["broadcast", "a", 1], [["res.partner", 7], "b", 2], ["broadcast", "c", 3]]}), AUTH)
        assert status == 200, body
        assert len(body["result"]["ids"]) == 3
        payloads = listener.wait(1)
        assert payloads == [[[bus_db, "broadcast"], [bus_db, "res.partner", 7]]]
    finally:
        listener.close()


def test_api_key_is_required(server):
    status, headers, body = post(server.http_port, call({"channel": "broadcast", "type": "x"}))
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body["error"]["data"]["name"] == "odoo.exceptions.AccessDenied"
    status, _, body = post(server.http_port, call({"channel": "broadcast", "type": "x"}),
                           {"Authorization": "Bearer wrong"})
    assert status == 403
    assert body["error"]["data"]["message"] == "wrong API key"


@pytest.mark.parametrize("payload, status, code", [
    (b"{not json", 400, -32700),
    (b"[1, 2]", 400, -32600),
    (orjson.dumps({"jsonrpc": "2.0", "params": [1], "id": 3}), 400, -32600),
    (orjson.dumps(call({"channel": "broadcast", "type": "x", "bogus": 1})), 200, -32602),
    (orjson.dumps(call({"channel": {"a": 1}, "type": "x"})), 200, -32602),
    (orjson.dumps(call({"notifications": "nope"})), 200, -32602),
    (orjson.dumps(call({"channel": "broadcast", "type": "x", "db": "elsewhere"})), 404, 404),
])
def test_malformed_requests_get_jsonrpc_errors(server, payload, status, code):
    got_status, _, body = post(server.http_port, payload, AUTH)
    assert got_status == status
    assert body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == code
    assert body["error"]["data"]["message"]


def test_get_is_refused_with_405(server):
    status, headers, body = post(server.http_port, None, method="GET")
    assert status == 405 and headers["Allow"] == "POST"
    assert body["error"]["code"] == -32600


def test_publishing_is_disabled_without_a_configured_key(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0")
    status, _, body = post(server.http_port, call({"channel": "broadcast", "type": "x"}), AUTH)
    assert status == 403
    assert "bus_api_key is not set" in body["error"]["data"]["message"]
