"""conf/nginx.conf for real: a loopback rendering of the sample in front of a prefork rtbus.

Clients connect from 127.0.0.3 while nginx reaches rtbus from 127.0.0.1, so the logs
can tell the real client from the proxy (rtbus runs with proxy_mode).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import busclient
from ops_helpers import CLIENT_ADDRESS, publish_over_http, request, rpc
from serverproc import wait_until

pytestmark = pytest.mark.timeout(120)


def ws_connect(port: int):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(CLIENT_ADDRESS, 0))
    return busclient.connect(port, socket=sock)


def test_the_rendered_sample_passes_nginx_t(nginx):
    checked = nginx.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "proxy_http_version 1.1" in nginx.site


def test_the_sample_bounds_clients_before_rtbus(nginx):
    for directive in ("client_header_timeout 10s;", "client_body_timeout 30s;", "client_max_body_size 1m;",
                      "large_client_header_buffers 4 16k;", "limit_conn rtbus_per_client 256;",
                      "limit_req zone=rtbus_handshakes"):
        assert directive in nginx.site, directive


def test_a_large_head_and_a_large_body_end_at_nginx(nginx):
    huge = {f"X-Pad-{index}": "h" * 16000 for index in range(8)}
    status, _, _ = request(nginx.port, "GET", "/websocket/health", headers=huge)
    assert status in (400, 494), status      # nginx's "request header too large"
    status, _, _ = request(nginx.port, "POST", "/websocket/peek_notifications", body={"pad": "x" * (2 << 20)})
    assert status == 413


def test_health_through_nginx_reaches_the_gevent_process(nginx, ops_server):
    status, headers, body = request(nginx.port, "GET", "/websocket/health")
    assert status == 200 and json.loads(body) == {"status": "pass"}
    assert headers.get("Cache-Control") == "no-store"
    assert "Set-Cookie" not in headers
    # The /websocket location sent it to the longpolling port: the gevent process logged it.
    gevent_pid = ops_server.children_titled("rtbus: gevent")[0]
    wait_until(lambda: any(f" {gevent_pid} " in line and "GET /websocket/health" in line
                           for line in ops_server.log().splitlines()),
               10, message="the gevent process's access line for the probe")


def test_websocket_subscribe_publish_receive_through_nginx(nginx):
    ws = ws_connect(nginx.port)
    try:
        busclient.subscribe(ws, ["room"])          # the ping barrier crosses nginx too
        notification_id = publish_over_http(nginx.port, "room", "nginx.test", {"n": 1})
        got = busclient.receive_wanted(ws, [notification_id], timeout=10)
        assert got == [{"id": notification_id, "message": {"type": "nginx.test", "payload": {"n": 1}}}]
    finally:
        ws.close()


def test_jsonrpc_errors_come_back_through_nginx(nginx):
    status, answer = rpc(nginx.port, "/bus/publish", {"channel": "room", "type": "x", "payload": 1},
                         headers={"Authorization": "Bearer wrong"})
    assert status == 403
    assert answer["error"]["data"]["name"] == "odoo.exceptions.AccessDenied"


def test_longpolling_through_nginx(nginx, ops_publish):
    (before,) = ops_publish("lobby", "nginx.before", None)
    answers = {}

    def poll():
        answers["poll"] = rpc(nginx.port, "/longpolling/poll", {"channels": ["lobby"], "last": before},
                              timeout=60)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # Publish until the held poll answers: it may not be subscribed yet at the first one.
    ids = []
    deadline = time.monotonic() + 30
    while poller.is_alive() and time.monotonic() < deadline:
        ids.extend(ops_publish("lobby", "nginx.poll", {"k": len(ids)}))
        poller.join(0.5)
    assert not poller.is_alive(), "the long-poll did not answer through nginx"
    status, answer = answers["poll"]
    assert status == 200, answer
    result = answer["result"]
    assert result and all(n["id"] in ids for n in result)
    assert result[0]["message"]["type"] == "nginx.poll"


def test_index_page_through_nginx(nginx):
    status, headers, body = request(nginx.port, "GET", "/")
    assert status == 200
    assert json.loads(body)["server"] == "rtbus"
    assert "Strict-Transport-Security" in headers


def test_plain_http_redirects_to_https(nginx):
    status, headers, _body = request(nginx.redirect_port, "GET", "/websocket/health",
                                     headers={"Host": "bus.example.com"})
    assert status == 301
    assert headers["Location"] == "https://bus.example.com/websocket/health"


def test_metrics_only_for_the_monitoring_host(nginx):
    status, headers, body = request(nginx.port, "GET", "/metrics", source="127.0.0.1")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"rtbus_children{" in body
    status, _headers, _body = request(nginx.port, "GET", "/metrics", source=CLIENT_ADDRESS)
    assert status == 403


def test_logs_show_the_real_client_behind_nginx(nginx, ops_server):
    request(nginx.port, "GET", "/?from=client-address-check")
    line = wait_until(lambda: [l for l in ops_server.log().splitlines() if "from=client-address-check" in l],
                      10, message="the HTTP worker's access line")[0]
    assert f"rtbus.http.access: {CLIENT_ADDRESS} " in line
    ws = ws_connect(nginx.port)
    ws.close()
    wait_until(lambda: any(f"rtbus.http.access: {CLIENT_ADDRESS} \"GET /websocket HTTP/1.1\" 101" in l
                           for l in ops_server.log().splitlines()),
               10, message="the gevent process's access line for the websocket")
