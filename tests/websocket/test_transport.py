"""The websocket transport end to end: a real server, real sockets, real clients."""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
import time

import pytest
import websocket

from rtbus.websocket.frames import Frame, Opcode, encode_close
from rtbus.websocket.handshake import WORKER_VERSION
from busclient import (connect, nothing_more, receive, receive_ids, receive_wanted,
                       received_before, subscribe)
from serverproc import http_get
from waiting import metric
from wsclient import RawWebsocket


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="ws", RTBUS_PUBLIC_CHANNELS="room,lobby")


@pytest.fixture(scope="module")
def tight_server(module_servers):
    """Short timers and a small outbound queue, for the tests that wait for them."""
    return module_servers(name="tight", RTBUS_WEBSOCKET_PING_INTERVAL="1",
                          RTBUS_WEBSOCKET_RESPONSE_TIMEOUT="1", RTBUS_WEBSOCKET_KEEP_ALIVE_TIMEOUT="4",
                          RTBUS_MAILBOX_MAX_BYTES="131072", RTBUS_WEBSOCKET_SEND_TIMEOUT="2")


# -- the happy path ------------------------------------------------------------


def test_subscribe_publish_receive(server, publish):
    ws = connect(server.longpolling_port)
    try:
        subscribe(ws, ["room"])
        ids = publish("room", "hello", {"text": "hi"}) + publish("broadcast", "news", [1, 2])
        got = receive_wanted(ws, ids)
        assert got == [{"id": ids[0], "message": {"type": "hello", "payload": {"text": "hi"}}},
                       {"id": ids[1], "message": {"type": "news", "payload": [1, 2]}}]
        assert nothing_more(ws)
    finally:
        ws.close()


def test_a_reading_client_gets_its_batches_written_through(server, publish):
    # The dispatcher's own non-blocking send: no mailbox, no writer greenlet.
    port = server.longpolling_port
    ws = connect(port)
    try:
        (marker,) = publish("nobody-listens", "marker")     # nothing older is replayed
        subscribe(ws, ["room"], last=marker)
        sent = metric(port, "rtbus_websocket_batches_sent_total")
        through = metric(port, "rtbus_websocket_batches_written_through_total")
        ids = []
        for n in range(5):
            ids += publish("room", "hello", n)
            assert receive_ids(ws, ids[-1:]) == ids[-1:]
        assert metric(port, "rtbus_websocket_batches_sent_total") - sent == 5
        assert metric(port, "rtbus_websocket_batches_written_through_total") - through == 5
    finally:
        ws.close()


def test_channels_stay_apart(server, publish):
    room, lobby = connect(server.longpolling_port), connect(server.longpolling_port)
    try:
        subscribe(room, ["room"])
        subscribe(lobby, ["lobby"])
        (lobby_id,) = publish("lobby", "only-lobby")
        (room_id,) = publish("room", "after")
        assert receive_ids(lobby, [lobby_id]) == [lobby_id]
        # A subscriber gets its notifications in id order: a lobby one would come first.
        assert lobby_id not in received_before(room, room_id)
    finally:
        room.close()
        lobby.close()


def test_reconnect_with_last_gets_exactly_what_was_missed(server, publish):
    first = publish("room", "before")[0]
    missed = publish("room", "missed-1") + publish("room", "missed-2")
    ws = connect(server.longpolling_port)
    try:
        subscribe(ws, ["room"], last=first)
        got = receive(ws, 2)
        assert [n["id"] for n in got] == missed
        assert nothing_more(ws)
    finally:
        ws.close()


def test_last_above_the_max_id_counts_as_zero(server, publish):
    (recent,) = publish("lobby", "recent")
    ws = connect(server.longpolling_port)
    try:
        subscribe(ws, ["lobby"], last=10**9)
        got = receive(ws, 1)
        assert recent in [n["id"] for n in got]      # the 50 s backlog
    finally:
        ws.close()


def test_many_subscribers_each_get_each_notification_once(server, publish):
    clients = [connect(server.longpolling_port) for _ in range(20)]
    try:
        (marker,) = publish("nobody-listens", "marker")     # nothing older is replayed
        for ws in clients:
            subscribe(ws, ["room"], last=marker)
        ids = publish("room", "burst", None, count=30)
        for ws in clients:
            assert receive_ids(ws, ids) == ids
            assert nothing_more(ws, wait=0.1)
    finally:
        for ws in clients:
            ws.close()


def test_ping_is_answered_with_the_same_payload(server):
    ws = connect(server.longpolling_port)
    try:
        ws.ping(b"are you there")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"are you there"
    finally:
        ws.close()


def test_client_close_is_echoed(server):
    raw = RawWebsocket(server.longpolling_port)
    try:
        assert raw.status == 101
        raw.send_frame(Opcode.CLOSE, encode_close(1000, "bye"))
        assert raw.read_close() == (1000, "bye")
        assert raw.closed_by_peer(), server.log()[-3000:]
    finally:
        raw.close()


# -- bad input: clear errors, nothing lost --------------------------------------


@pytest.mark.parametrize("message", [
    "not json", '{"data": {}}', "[1, 2]", '{"event_name": 7}', '{"event_name": "unknown", "data": 1}',
    '{"event_name": "subscribe", "data": {"channels": [1, {"a": 2}], "last": 0}}',
    '{"event_name": "subscribe", "data": {"channels": ["room"]}}',
    '{"event_name": "subscribe", "data": {"channels": ["room"], "last": "x"}}',
])
def test_bad_events_are_logged_and_the_connection_kept(server, publish, message):
    ws = connect(server.longpolling_port)
    try:
        ws.send(message)
        ws.send_binary(b"\x00")      # the browser worker's probe: ignored
        subscribe(ws, ["room"])
        ids = publish("room", "still-here")
        assert receive_ids(ws, ids) == ids
    finally:
        ws.close()
    assert "Traceback" not in server.log()


def test_eleven_frames_at_once_close_with_1013(server):
    raw = RawWebsocket(server.longpolling_port)
    try:
        frames = b"".join(Frame(True, Opcode.PING, b"x").serialize(mask=b"abcd") for _ in range(11))
        raw.send_raw(frames)
        assert raw.read_close() == (1013, "rate limit exceeded")
    finally:
        raw.close()


def test_floods_after_the_1013_are_not_counted_again(server):
    """Frames that keep coming while our close awaits its echo are dropped, not counted
    (nor logged) as one more rate-limit close each."""
    before = metric(server.longpolling_port, "rtbus_rate_limit_closes_total")
    raw = RawWebsocket(server.longpolling_port)
    try:
        flood = b"".join(Frame(True, Opcode.PING, b"x").serialize(mask=b"abcd") for _ in range(50))
        raw.send_raw(flood)
        assert raw.read_close() == (1013, "rate limit exceeded")
        for _ in range(5):
            raw.send_raw(flood)
        raw.send_frame(Opcode.CLOSE, encode_close(1000))     # the echo: the server then hangs up
        assert raw.closed_by_peer()
    finally:
        raw.close()
    assert metric(server.longpolling_port, "rtbus_rate_limit_closes_total") == before + 1


def test_a_request_line_of_frame_bytes_is_answered_400_and_not_logged_as_an_error(server):
    """What a client that keeps talking websocket after a refused handshake sends: the
    client's doing, so an INFO line, never one at ERROR that any client could write."""
    with socket.create_connection(("127.0.0.1", server.longpolling_port), timeout=5) as sock:
        sock.sendall(b"\x88\x82abcd\x62\x2b\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    server.wait_log(r"INFO .*bad request from 127\.0\.0\.1: .*Invalid HTTP method")
    assert not [row for row in server.log().splitlines() if " ERROR " in row and "Invalid HTTP method" in row]


def test_paced_frames_stay_open(server):
    ws = connect(server.longpolling_port)
    try:
        for _ in range(11):
            ws.send_binary(b"\x00")
            time.sleep(0.25)
        ws.ping(b"alive")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG
    finally:
        ws.close()


@pytest.mark.parametrize("send, code", [
    (lambda raw: raw.header_only(Opcode.TEXT, 2 * 1024 * 1024), 1009),   # announced, never sent
    (lambda raw: raw.send_frame(Opcode.TEXT, b"{}", mask=False), 1002),
    (lambda raw: raw.send_frame(Opcode.TEXT, b'{"event_name": "\xff\xfe"}'), 1007),
    (lambda raw: raw.send_frame(Opcode.CLOSE, struct.pack("!H", 999)), 1002),
    (lambda raw: raw.send_frame(Opcode.CLOSE, struct.pack("!H", 1005)), 1002),
    (lambda raw: raw.send_frame(Opcode.CLOSE, b"\x03"), 1002),
    (lambda raw: raw.send_frame(Opcode.TEXT, b"{}", rsv1=True), 1002),
    (lambda raw: raw.send_frame(Opcode.PING, b"x" * 126), 1002),
    (lambda raw: raw.send_frame(Opcode.CONTINUATION, b"{}"), 1002),
    (lambda raw: raw.send_frame(0x3, b"{}"), 1002),
], ids=["oversized", "unmasked", "bad-utf8", "close-999", "close-1005", "close-1-byte", "rsv1",
        "long-ping", "stray-continuation", "unknown-opcode"])
def test_protocol_violations_close_with_their_code(server, send, code):
    raw = RawWebsocket(server.longpolling_port)
    try:
        send(raw)
        assert raw.read_close()[0] == code
        assert raw.closed_by_peer()
    finally:
        raw.close()


# -- handshake ------------------------------------------------------------------


@pytest.mark.parametrize("headers, status, text", [
    ({"Origin": None}, 400, "Empty or missing header(s): origin"),
    ({"Upgrade": "h2c"}, 400, "Invalid upgrade header"),
    ({"Sec-WebSocket-Version": "12"}, 426, ""),
    ({"Sec-WebSocket-Key": "not base64!"}, 400, "should be b64 encoded"),
    ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "of length 16 once decoded"),
])
def test_handshake_rejections(server, headers, status, text):
    raw = RawWebsocket(server.longpolling_port, headers=headers)
    try:
        assert raw.status == status
        if status == 426:
            assert raw.response_headers["sec-websocket-version"] == "13"
    finally:
        raw.close()


def test_plain_get_gets_the_handshake_sentence(server):
    status, _, body = http_get(server.longpolling_port, "/websocket")
    assert status == 400
    assert "Empty or missing header(s)" in json.loads(body)["error"]["message"]


def test_websocket_on_the_http_port_names_the_longpolling_port(server):
    raw = RawWebsocket(server.http_port)
    try:
        assert raw.status == 421
    finally:
        raw.close()
    status, _, body = http_get(server.http_port, "/websocket")
    message = json.loads(body)["error"]["message"]
    assert status == 421
    assert "Couldn't bind the websocket. Is the connection opened on the evented port" in message
    server.wait_log(r"Couldn't bind the websocket")


def test_outdated_version_with_user_agent_is_closed_cleanly(server):
    raw = RawWebsocket(server.longpolling_port, path="/websocket?version=17.0-1",
                       headers={"User-Agent": "Mozilla/5.0"})
    try:
        assert raw.status == 101
        assert raw.read_close() == (1000, "OUTDATED_VERSION")
    finally:
        raw.close()


def test_missing_version_with_user_agent_is_outdated(server):
    raw = RawWebsocket(server.longpolling_port, headers={"User-Agent": "Mozilla/5.0"})
    try:
        assert raw.read_close() == (1000, "OUTDATED_VERSION")
    finally:
        raw.close()


def test_current_version_or_no_user_agent_stays_open(server, publish):
    current = connect(server.longpolling_port, path=f"/websocket?version={WORKER_VERSION}",
                      header=["User-Agent: Mozilla/5.0"])
    no_agent = connect(server.longpolling_port)     # websocket-client sends no User-Agent
    for ws in (current, no_agent):
        try:
            subscribe(ws, ["room"])
            ids = publish("room", "version-ok")
            assert receive_ids(ws, ids) == ids
        finally:
            ws.close()


# -- timers and slow consumers --------------------------------------------------


def test_idle_connection_is_pinged_and_dropped_when_silent(tight_server):
    raw = RawWebsocket(tight_server.longpolling_port)
    try:
        frame = raw.read_frame()
        assert frame is not None and frame.opcode == Opcode.PING
        started = time.monotonic()
        assert raw.closed_by_peer(timeout=5)          # we never answer the ping
        assert time.monotonic() - started < 4
    finally:
        raw.close()


def test_a_close_the_client_never_echoes_drops_the_connection(tight_server):
    raw = RawWebsocket(tight_server.longpolling_port, headers={"User-Agent": "Mozilla/5.0"})
    try:
        assert raw.read_close() == (1000, "OUTDATED_VERSION")
        started = time.monotonic()
        assert raw.closed_by_peer(timeout=5)          # we never echo the close
        assert time.monotonic() - started < 4
        tight_server.wait_log(r"no answer to our close within 1 s", timeout=5)
    finally:
        raw.close()


def test_keep_alive_lifetime_closes_with_4002(tight_server):
    ws = connect(tight_server.longpolling_port)
    try:
        ws.settimeout(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_PING:
                ws.pong(frame.data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                assert struct.unpack("!H", frame.data[:2])[0] == 4002
                break
        else:
            pytest.fail("no 4002 close within 10 s")
    finally:
        ws.close()


def test_slow_consumer_is_dropped_without_delaying_others(tight_server, publish):
    slow = RawWebsocket(tight_server.longpolling_port, rcvbuf=4096)
    fast = connect(tight_server.longpolling_port)
    received: list[dict] = []
    try:
        slow.send_text(json.dumps({"event_name": "subscribe", "data": {"channels": [], "last": 10**9}}))
        slow.barrier()
        (marker,) = publish("nobody-listens", "marker")     # nothing older is replayed
        subscribe(fast, [], last=marker)
        reader = threading.Thread(target=lambda: received.extend(receive(fast, 200, timeout=20)))
        reader.start()
        payload = "x" * 16384
        ids = []
        for _ in range(20):
            ids += publish("broadcast", "bulk", payload, count=10)
        reader.join(25)
        assert [n["id"] for n in received if n["message"]["type"] == "bulk"] == ids
        tight_server.wait_log(r"slow consumer dropped", timeout=10)
        assert slow.closed_by_peer(timeout=10)
    finally:
        slow.close()
        fast.close()


def test_a_frame_the_kernel_takes_in_part_is_finished_before_the_next(tight_server, publish):
    # A 300 KB batch cannot fit a 4 KB receive window and the send buffer: the write-through
    # send takes part of it, the writer sends the rest, and the batches queued meanwhile
    # follow it, intact and in order.
    ws = RawWebsocket(tight_server.longpolling_port, rcvbuf=4096, timeout=10)
    try:
        (marker,) = publish("nobody-listens", "marker")     # nothing older is replayed
        ws.send_text(json.dumps({"event_name": "subscribe", "data": {"channels": ["lobby"],
                                                                    "last": marker}}))
        ws.barrier()
        large = "z" * 300_000
        ids = publish("lobby", "large", large) + publish("lobby", "small", 1, count=3)
        got = []
        while len(got) < len(ids):
            frame = ws.read_frame()
            assert frame is not None, f"the connection ended after {got}"
            if frame.opcode == Opcode.TEXT:
                got += json.loads(frame.payload)
        assert [n["id"] for n in got] == ids
        assert got[0]["message"]["payload"] == large
    finally:
        ws.close()


def test_sigterm_closes_websockets_with_1001(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0")
    ws = connect(server.longpolling_port)
    try:
        subscribe(ws, [])
        server.signal(signal.SIGTERM)
        ws.settimeout(10)
        opcode, frame = ws.recv_data_frame(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        assert struct.unpack("!H", frame.data[:2])[0] == 1001
        ws.send_close(1001)
    finally:
        ws.close()
    assert server.wait_exit(20) == 0
    assert "SIGKILL" not in server.log()


def test_a_second_sigterm_drops_the_websockets_that_did_not_answer_the_1001(start_server):
    # No greenlet serves an idle websocket: the fast stop drops them through the hub.
    server = start_server("--workers=1", "--max-cron-threads=0")
    raw = RawWebsocket(server.longpolling_port, timeout=10)
    try:
        raw.send_text(json.dumps({"event_name": "subscribe", "data": {"channels": [], "last": 0}}))
        raw.barrier()
        server.signal(signal.SIGTERM)
        assert raw.read_close()[0] == 1001          # and never echoed
        server.signal(signal.SIGTERM)
        # Dropped well before the 15 s an unanswered close is otherwise given.
        assert raw.closed_by_peer(timeout=8)
    finally:
        raw.close()
    server.wait_log(r"stopping fast")
    assert server.wait_exit(20) is not None


def test_single_mode_serves_websockets_too(start_server, server_env):
    server = start_server("--workers=0", "--max-cron-threads=0", "--bus-api-key=k")
    ws = connect(server.http_port)
    try:
        subscribe(ws, [])
        from http_client import post_json
        status, _, body = post_json(server.http_port, "/bus/publish",
                                    {"jsonrpc": "2.0", "method": "call", "id": 1,
                                     "params": {"channel": "broadcast", "type": "single"}},
                                    {"Authorization": "Bearer k"})
        assert status == 200, body
        got = receive(ws, 1)
        assert [n["id"] for n in got if n["message"]["type"] == "single"] == body["result"]["ids"]
    finally:
        ws.close()


def _handshake_with(port: int, frames: bytes):
    """Send the upgrade request and `frames` in one write, as an eager client may."""
    import base64
    import os
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Origin: http://127.0.0.1:{port}\r\n\r\n").encode()
    sock.sendall(request + frames)
    return sock


def _read_all(sock, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `timeout` passes (False)."""
    import socket

    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False


def _read_until(sock, wanted: bytes, timeout: float = 5.0) -> bytes:
    """What the server sent until `wanted` appeared in it (fails after `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    while wanted not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended before {wanted!r}"
        data += chunk
    return data


def test_close_sent_with_the_handshake_is_echoed_and_ends_the_connection(server):
    sock = _handshake_with(server.longpolling_port,
                           Frame(True, Opcode.CLOSE, encode_close(1000, "bye")).serialize(mask=b"abcd"))
    try:
        data, closed = _read_all(sock)
        assert closed, "the server kept the connection open after the closing handshake"
        assert data.startswith(b"HTTP/1.1 101")
        assert data.endswith(Frame(True, Opcode.CLOSE, encode_close(1000, "bye")).serialize())
    finally:
        sock.close()


def test_subscribe_sent_with_the_handshake_is_not_lost(server, publish):
    subscribe_frame = Frame(True, Opcode.TEXT, json.dumps(
        {"event_name": "subscribe", "data": {"channels": ["room"], "last": 10**9}}).encode())
    sock = _handshake_with(server.longpolling_port, subscribe_frame.serialize(mask=b"wxyz"))
    try:
        # The second pong comes after the subscribe was handled (see busclient.barrier).
        data = b""
        for token in (b"eager-1", b"eager-2"):
            sock.sendall(Frame(True, Opcode.PING, token).serialize(mask=b"abcd"))
            data += _read_until(sock, Frame(True, Opcode.PONG, token).serialize())
        (notification_id,) = publish("room", "eager")
        deadline = time.monotonic() + 5
        sock.settimeout(0.2)
        while f'"id":{notification_id},'.encode() not in data and time.monotonic() < deadline:
            try:
                data += sock.recv(65536)
            except OSError:
                pass
        assert f'"id":{notification_id},'.encode() in data
    finally:
        sock.close()
