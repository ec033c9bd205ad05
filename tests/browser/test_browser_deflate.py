"""Chromium always offers permessage-deflate: it is negotiated, and the browser reads the
server's compressed batches, large and small, both through the board's own bus client and
through a bare WebSocket."""

from __future__ import annotations

import pytest

from board import open_board, wait_shown, wait_subscribed
from rtbus.websocket.handshake import WORKER_VERSION
from serverproc import wait_until
from waiting import metric

pytestmark = pytest.mark.timeout(120)

BOTH_WAYS = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
LARGE_TEXT = "Sprechen Sie Deutsch? Ja, ein bisschen. Ärger über Öl und Übermut. " * 600


def gevent_metric(port: int, name: str) -> float:
    return metric(port, name, kinds=("gevent",))


def test_the_board_negotiates_deflate_and_shows_large_and_small_notifications(
        context, board_server, publish):
    port = board_server.longpolling_port
    negotiated = gevent_metric(port, "rtbus_websocket_deflate_negotiated_total")
    compressed = gevent_metric(port, "rtbus_websocket_batches_compressed_total")
    page = open_board(context, board_server.base_url)
    wait_subscribed(page, "demo.lobby")
    assert gevent_metric(port, "rtbus_websocket_deflate_negotiated_total") >= negotiated + 1

    small = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "short"})
    large = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": LARGE_TEXT})
    for notification_id in (small, large):
        wait_shown(page, notification_id)
    seen = page.evaluate("ids => window.rtbusDemo.notifications.filter(n => ids.includes(n.id))",
                         [small, large])
    assert [(n["id"], n["payload"]["text"]) for n in seen] == [(small, "short"), (large, LARGE_TEXT)]
    wait_until(lambda: gevent_metric(port, "rtbus_websocket_batches_compressed_total") >= compressed + 1,
               5, message="the large batch counted as sent compressed")


OPEN_SOCKET = """async ([url, subscribe]) => {
    const ws = new WebSocket(url);
    window.received = [];
    ws.onmessage = (event) => window.received.push(...JSON.parse(event.data));
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    ws.send(subscribe);
    window.socket = ws;
    return ws.extensions;
}"""


def test_a_bare_browser_websocket_reads_compressed_frames_exactly(context, board_server, publish):
    port = board_server.longpolling_port
    page = context.new_page()
    page.goto(board_server.base_url + "/index.json")
    subscriptions = gevent_metric(port, "rtbus_websocket_subscriptions_total")
    compressed = gevent_metric(port, "rtbus_websocket_batches_compressed_total")
    # A long subscribe: Chromium compresses it, the server inflates it.
    subscribe = ('{"event_name":"subscribe","data":{"channels":['
                 + ",".join(f'"padding-{i}"' for i in range(300)) + '],"last":0}}')
    extensions = page.evaluate(OPEN_SOCKET, [f"ws://127.0.0.1:{port}/websocket?version={WORKER_VERSION}",
                                             subscribe])
    assert extensions == BOTH_WAYS
    wait_until(lambda: gevent_metric(port, "rtbus_websocket_subscriptions_total") > subscriptions, 10,
               message="the compressed subscribe served")
    payloads = {"small": {"n": 1}, "large": {"text": LARGE_TEXT, "list": list(range(2000))}}
    ids = {name: publish("broadcast", f"deflate/{name}", payload) for name, payload in payloads.items()}
    page.wait_for_function("ids => ids.every(id => window.received.some(n => n.id === id))",
                           arg=list(ids.values()))
    got = page.evaluate("ids => window.received.filter(n => ids.includes(n.id))", list(ids.values()))
    assert [(n["id"], n["message"]) for n in got] == [
        (ids[name], {"type": f"deflate/{name}", "payload": payloads[name]}) for name in payloads]
    wait_until(lambda: gevent_metric(port, "rtbus_websocket_batches_compressed_total") >= compressed + 1,
               5, message="the large batch counted as sent compressed")
    page.evaluate("() => window.socket.close()")
