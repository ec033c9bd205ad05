"""A page on another site, sending the visitor's cookie, never acts as the visitor: the Origin
rule on real servers, attacked the way a hostile page would (websocket, long-poll, peek,
the JSON-RPC content-type trick), plus the session cookie's flags and unknown databases."""

from __future__ import annotations

import json
import re
import socket

import pytest
import websocket

import busclient
from busclient import receive_ids, received_before
from http_client import post_json
from rtbus.db.cluster import free_loopback_port as free_port
from rtbus.session import create_session
from serverproc import http_get, wait_until

pytestmark = pytest.mark.timeout(120)

EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def server(module_servers):
    # Fixed ports: the gevent process knows its sibling page by http_port (0 would not do).
    return module_servers("--allowed-origins=https://app.example", "--demo-mode",
                          f"--http-port={free_port()}", f"--gevent-port={free_port()}", name="origin",
                          RTBUS_PUBLIC_CHANNELS="lobby")


@pytest.fixture(scope="module")
def strict(module_servers):
    return module_servers("--cross-origin-sessions=refuse", name="strict")


@pytest.fixture(scope="module")
def proxied(module_servers):
    return module_servers("--proxy-mode", "--demo-mode", name="proxied")


@pytest.fixture(scope="module")
def victim(module_conn):
    """A signed-in user's sid and partner id."""
    sid = create_session(module_conn, 71, 7100, [])
    module_conn.commit()
    return sid, 7100


def rpc(port, path, params=None, headers=None, body=None):
    payload = {"jsonrpc": "2.0", "method": "call", "id": 1, "params": params or {}}
    return post_json(port, path, payload if body is None else body, headers)


def connect(port, sid, origin):
    return busclient.connect(port, sid=sid, origin=origin)


def subscribed(ws) -> None:
    busclient.subscribe(ws, ["lobby"], last=0)


# -- websockets ------------------------------------------------------------------------------


def test_a_foreign_page_gets_a_public_websocket_not_the_victims(server, victim, module_publish):
    sid, partner = victim
    ws = connect(server.longpolling_port, sid, EVIL)
    try:
        subscribed(ws)
        private = module_publish(("res.partner", partner))[0]
        public = module_publish("lobby")[0]
        assert private not in received_before(ws, public)
    finally:
        ws.close()
    server.wait_log(rf"Downgrading websocket session\. Host=127\.0\.0\.1:{server.longpolling_port}, "
                    rf"Origin={EVIL}, Scheme=http")


@pytest.mark.parametrize("origin", ["own", "sibling", "https://app.example"])
def test_trusted_pages_act_as_the_session(server, victim, module_publish, origin):
    sid, partner = victim
    origin = {"own": f"http://127.0.0.1:{server.longpolling_port}",
              "sibling": f"http://127.0.0.1:{server.http_port}"}.get(origin, origin)
    ws = connect(server.longpolling_port, sid, origin)
    try:
        subscribed(ws)
        private = module_publish(("res.partner", partner))[0]
        assert receive_ids(ws, [private]) == [private]
    finally:
        ws.close()


@pytest.mark.parametrize("origin", ["null", "http://127.0.0.1:1", "localhost", "https-same-port",
                                    "https://app.example.evil.example", "https://app.example:444"])
def test_near_misses_are_foreign(server, victim, module_publish, origin):
    sid, partner = victim
    port = server.longpolling_port
    origin = {"localhost": f"http://localhost:{port}", "https-same-port": f"https://127.0.0.1:{port}"}.get(
        origin, origin)
    ws = connect(server.longpolling_port, sid, origin)
    try:
        subscribed(ws)
        private = module_publish(("res.partner", partner))[0]
        public = module_publish("lobby")[0]
        assert private not in received_before(ws, public)
    finally:
        ws.close()


def test_refuse_mode_answers_403_to_a_foreign_handshake(strict, victim):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(strict.longpolling_port, victim[0], EVIL)
    assert info.value.status_code == 403
    ws = connect(strict.longpolling_port, victim[0], f"http://127.0.0.1:{strict.longpolling_port}")
    ws.close()


def test_a_foreign_handshake_without_cookie_is_a_plain_public_one(strict):
    ws = websocket.create_connection(f"ws://127.0.0.1:{strict.longpolling_port}/websocket", timeout=5,
                                     origin=EVIL)
    ws.close()


# -- long-poll and peek ----------------------------------------------------------------------


def test_a_foreign_long_poll_runs_as_public(server, victim, module_publish):
    sid, partner = victim
    last = module_publish("lobby")[0]
    private = module_publish(("res.partner", partner))[0]
    public = module_publish("lobby")[0]
    headers = {"Cookie": f"session_id={sid}", "Origin": EVIL}
    status, answer_headers, answer = rpc(server.longpolling_port, "/longpolling/poll",
                                         {"channels": ["lobby"], "last": last}, headers)
    assert status == 200, answer
    ids = [n["id"] for n in answer["result"]]
    assert public in ids and private not in ids
    assert "Access-Control-Allow-Origin" not in answer_headers     # and it could not read it anyway
    headers["Origin"] = f"http://127.0.0.1:{server.longpolling_port}"
    _status, _headers, answer = rpc(server.longpolling_port, "/longpolling/poll",
                                    {"channels": ["lobby"], "last": last}, headers)
    assert private in [n["id"] for n in answer["result"]]


def test_a_foreign_peek_sees_no_private_channel(server, victim, module_db):
    sid, partner = victim
    params = {"channels": [], "last": 0, "is_first_poll": True}
    for port in (server.http_port, server.longpolling_port):
        _status, _headers, foreign = rpc(port, "/websocket/peek_notifications", params,
                                         {"Cookie": f"session_id={sid}", "Origin": EVIL})
        assert [module_db, "res.partner", partner] not in foreign["result"]["channels"]
        _status, _headers, own = rpc(port, "/websocket/peek_notifications", params,
                                     {"Cookie": f"session_id={sid}", "Origin": f"http://127.0.0.1:{port}"})
        assert [module_db, "res.partner", partner] in own["result"]["channels"]


def test_refuse_mode_answers_403_to_foreign_posts_and_serves_non_browsers(strict, victim):
    sid = victim[0]
    params = {"channels": [], "last": 0, "is_first_poll": True}
    for port, path in ((strict.longpolling_port, "/longpolling/poll"),
                       (strict.longpolling_port, "/websocket/peek_notifications"),
                       (strict.http_port, "/websocket/peek_notifications")):
        status, _headers, answer = rpc(port, path, params, {"Cookie": f"session_id={sid}", "Origin": EVIL})
        assert status == 403, (path, answer)
    status, _headers, answer = rpc(strict.http_port, "/websocket/peek_notifications", params,
                                   {"Cookie": f"session_id={sid}"})
    assert status == 200 and "result" in answer


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_json_rpc_refuses_bodies_a_foreign_page_can_send_without_preflight(server, victim, content_type):
    body = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                       "params": {"channels": [], "last": 0, "is_first_poll": True}}).encode()
    for port in (server.http_port, server.longpolling_port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = ["POST /websocket/peek_notifications HTTP/1.1", f"Host: 127.0.0.1:{port}",
                f"Cookie: session_id={victim[0]}", f"Content-Length: {len(body)}", "Connection: close"]
        if content_type:
            head.append(f"Content-Type: {content_type}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
        assert b"application/json" in answer and b"Traceback" not in answer


def test_the_long_poll_preflight_admits_the_sibling_page_only(server):
    port = server.longpolling_port
    for origin, allowed in ((f"http://127.0.0.1:{server.http_port}", True), ("https://app.example", True),
                            (EVIL, False), ("null", False)):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall((f"OPTIONS /longpolling/poll HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n"
                      f"Access-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n").encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        head = answer.decode("latin-1").lower()
        assert head.startswith("http/1.1 204"), head
        assert (f"access-control-allow-origin: {origin.lower()}" in head) is allowed, head
        assert ("access-control-allow-headers: content-type" in head) is allowed, head


# -- cookies and databases -------------------------------------------------------------------


def test_the_session_cookie_is_httponly_lax_and_secure_behind_https(proxied):
    headers = {"X-Forwarded-Host": "bus.example", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    status, answer_headers, answer = rpc(proxied.http_port, "/demo/session", headers=headers)
    assert status == 200, answer
    cookie = answer_headers["Set-Cookie"]
    assert all(flag in cookie for flag in ("HttpOnly", "SameSite=Lax", "Secure", "Path=/")), cookie
    _status, answer_headers, _answer = rpc(proxied.http_port, "/demo/session",
                                           headers={**headers, "X-Forwarded-Proto": "http"})
    assert "Secure" not in answer_headers["Set-Cookie"]


def test_proxy_mode_compares_the_forwarded_origin(proxied, victim, module_db):
    sid, partner = victim
    params = {"channels": [], "last": 0, "is_first_poll": True}
    forwarded = {"X-Forwarded-Host": "bus.example", "X-Forwarded-Proto": "https",
                 "Cookie": f"session_id={sid}"}
    for origin, acts in (("https://bus.example", True), ("http://bus.example", False),
                         (f"http://127.0.0.1:{proxied.http_port}", False)):
        _status, _headers, answer = rpc(proxied.http_port, "/websocket/peek_notifications", params,
                                        {**forwarded, "Origin": origin})
        assert ([module_db, "res.partner", partner] in answer["result"]["channels"]) is acts, origin


def test_an_unknown_database_is_404_naming_no_database(server, module_db):
    port = server.longpolling_port
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"ws://127.0.0.1:{port}/websocket?db=nope", timeout=5)
    assert info.value.status_code == 404
    body = info.value.resp_body or b""
    assert b"does not serve the database" in body and module_db.encode() not in body
    for path in ("/longpolling/poll?db=nope", "/websocket/peek_notifications?db=nope"):
        status, _headers, answer = rpc(port, path, {"channels": [], "last": 0})
        assert status == 404 and answer["error"]["code"] == 404, answer
        assert module_db not in json.dumps(answer)
    log = server.log()
    assert "Traceback" not in log and "not served here" not in log


HOSTILE_REQUESTS = [
    b"POST /websocket/peek_notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 9\r\n\r\n{\"a\": [1",
    b"POST /websocket/peek_notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /bus/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer \xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /websocket/peek_notifications?db=%00%ff HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /websocket?version=%ff HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Origin: http://x\r\nSec-WebSocket-Key: !!!\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"POST /longpolling/poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Cookie: session_id=\"\\x00'\r\nContent-Length: 2\r\n\r\n[]",
]


@pytest.mark.parametrize("raw", HOSTILE_REQUESTS)
def test_no_answer_shows_a_traceback(server, raw):
    for port in (server.http_port, server.longpolling_port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        sock.close()
        assert answer.startswith(b"HTTP/1."), answer[:100]
        assert b"Traceback" not in answer and b'File "' not in answer, answer[:500]
    wait_until(lambda: http_get(server.longpolling_port, "/websocket/health")[0] == 200, 5,
               message="health after hostile requests")
