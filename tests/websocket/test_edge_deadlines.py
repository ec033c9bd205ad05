"""The evented port against slow and greedy clients, attacked over raw sockets on a real server:
deadlines for the head, the body and idle keep-alives, bounded heads, connection caps."""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import time

import pytest

from serverproc import health_ok
from waiting import metric, wait_until

pytestmark = pytest.mark.timeout(120)

HEADER_TIME = 1.0
BODY_TIME = 1.0
KEEPALIVE_TIME = 1.0
SWEEP_SLACK = 1.5          # the sweep interval, plus a loaded machine's scheduling
STALLED = 200              # kept modest: the suite shares a 2-core machine (the drill runs 1,000)


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(f"--limit-time-header={HEADER_TIME}", f"--limit-time-body={BODY_TIME}",
                          f"--http-keepalive-timeout={KEEPALIVE_TIME}", "--http-max-head-size=16384",
                          name="deadlines")


@pytest.fixture(scope="module")
def capped(module_servers):
    return module_servers("--gevent-max-connections-per-client=5", "--limit-time-header=30",
                          "--http-keepalive-timeout=30", name="capped")


@pytest.fixture(scope="module")
def process_capped(module_servers):
    return module_servers("--gevent-max-connections=4", "--gevent-max-connections-per-client=0",
                          "--limit-time-header=30", name="process-capped")


@pytest.fixture(scope="module")
def proxied(module_servers):
    return module_servers("--proxy-mode", "--gevent-max-connections-per-client=3",
                          "--http-keepalive-timeout=30", name="proxied-cap")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One response with its Content-Length body, leaving the connection open."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    assert len(body) == length, "more than one response"
    return data


def health_request(port: int, extra: str = "") -> bytes:
    return f"GET /websocket/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


def handshake_request(port: int, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\n{extra}\r\n").encode()


def timed_health(port: int) -> float:
    """Seconds a fresh connection takes to get /websocket/health's 200."""
    started = time.monotonic()
    sock = connect(port)
    try:
        sock.sendall(health_request(port, "Connection: close\r\n"))
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


def stall(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data` on a new connection and nothing more; what the server answered before
    closing, and how long after the send it closed."""
    sock = connect(port)
    try:
        started = time.monotonic()
        sock.sendall(data)
        answer = read_all(sock)
        return answer, time.monotonic() - started
    finally:
        sock.close()


def test_a_head_that_stalls_gets_408_and_is_disconnected_within_the_header_time(server):
    port = server.longpolling_port
    before = metric(port, "rtbus_edge_deadlines_passed_total", phase="head")
    answer, elapsed = stall(port, b"GET /websocket/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert HEADER_TIME - 0.1 <= elapsed <= HEADER_TIME + SWEEP_SLACK, elapsed
    assert metric(port, "rtbus_edge_deadlines_passed_total", phase="head") == before + 1


def test_a_handshake_that_stalls_is_ended_like_any_head(server):
    port = server.longpolling_port
    answer, elapsed = stall(port, handshake_request(port)[:-10])      # the head, cut short
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert elapsed <= HEADER_TIME + SWEEP_SLACK, elapsed


def test_a_connection_that_sends_nothing_is_closed_too(server):
    answer, elapsed = stall(server.longpolling_port, b"")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert elapsed <= HEADER_TIME + SWEEP_SLACK, elapsed


def test_a_body_that_stalls_gets_408_within_the_body_time(server):
    port = server.longpolling_port
    answer, elapsed = stall(port, f"POST /websocket/peek_notifications HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                  f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                                  f"{{\"jsonrpc\"".encode())
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert BODY_TIME - 0.1 <= elapsed <= BODY_TIME + SWEEP_SLACK, elapsed
    assert metric(port, "rtbus_edge_deadlines_passed_total", phase="body") >= 1


def test_a_route_that_ignores_the_body_answers_then_the_missing_body_ends_the_connection(server):
    port = server.longpolling_port
    answer, elapsed = stall(port, f"GET /websocket/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                  f"Content-Length: 100\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]     # at once, not after a 408
    assert b"408" not in answer
    assert BODY_TIME - 0.1 <= elapsed <= BODY_TIME + SWEEP_SLACK, elapsed


def test_a_chunked_body_that_trickles_is_ended_at_the_body_time(server):
    port = server.longpolling_port
    sock = connect(port)
    try:
        sock.sendall(f"POST /websocket/peek_notifications HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        started = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        # One byte every 0.2 s: each read makes progress, the body never ends.
        while time.monotonic() - started < BODY_TIME + SWEEP_SLACK + 1:
            try:
                sock.sendall(b"1\r\n \r\n")
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert elapsed <= BODY_TIME + SWEEP_SLACK, elapsed


def test_an_idle_keep_alive_connection_is_closed_silently(server):
    port = server.longpolling_port
    sock = connect(port)
    try:
        sock.sendall(health_request(port))
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        started = time.monotonic()
        rest = read_all(sock)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert b"408" not in rest
    assert metric(port, "rtbus_edge_deadlines_passed_total", phase="idle") >= 1
    assert KEEPALIVE_TIME - 0.1 <= elapsed <= KEEPALIVE_TIME + SWEEP_SLACK, elapsed


def test_a_kept_alive_connection_serves_requests_sent_in_time(server):
    port = server.longpolling_port
    sock = connect(port)
    try:
        for _ in range(3):
            sock.sendall(health_request(port))
            assert read_response(sock).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_a_head_over_the_limit_is_answered_431(server):
    port = server.longpolling_port
    sock = connect(port)
    try:
        sock.sendall(b"GET /websocket/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for index in range(40):         # 40 x 1 KiB lines against a 16 KiB limit
                sock.sendall(b"X-Pad-%d: %s\r\n" % (index, b"a" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert metric(port, "rtbus_edge_refusals_total", reason="head_too_large") >= 1


def test_health_answers_at_once_while_many_connections_stall(server):
    port = server.longpolling_port
    stalled = []
    try:
        for index in range(STALLED):
            sock = connect(port)
            sock.sendall(b"GET /websocket/health HTTP/1.1\r\nHost: 127")   # and nothing more
            stalled.append(sock)
        assert timed_health(port) < 1.0
        # All of them are ended by the one sweep, not one by one.
        for sock in stalled:
            assert read_all(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in stalled:
            sock.close()
    assert health_ok(port)


def close_frame_code(data: bytes) -> int | None:
    """The close code of the close frame following a 101 answer, if there is one."""
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(rest) < 4 or rest[0] != 0x88:
        return None
    return struct.unpack("!H", rest[2:4])[0]


def hold(port: int, count: int, extra: str = "") -> list[socket.socket]:
    """`count` connections kept open and idle after one answered request each."""
    held = []
    for _ in range(count):
        sock = connect(port)
        sock.sendall(health_request(port, extra))
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        held.append(sock)
    return held


def refused_answers(port: int, extra: str = "") -> tuple[bytes, bytes]:
    sock = connect(port)
    try:
        sock.sendall(health_request(port, extra))
        plain = read_all(sock)
    finally:
        sock.close()
    sock = connect(port)
    try:
        sock.sendall(handshake_request(port, extra))
        upgrade = read_all(sock)
    finally:
        sock.close()
    return plain, upgrade


def test_one_client_beyond_its_cap_gets_503_or_1013(capped):
    port = capped.longpolling_port
    held = hold(port, 5)
    try:
        plain, upgrade = refused_answers(port)
    finally:
        for sock in held:
            sock.close()
    assert re.match(rb"HTTP/1\.1 503 ", plain), plain[:200]
    assert b"Retry-After: 5" in plain
    assert upgrade.startswith(b"HTTP/1.1 101 "), upgrade[:200]
    assert close_frame_code(upgrade) == 1013
    assert metric(port, "rtbus_edge_refusals_total", reason="client") >= 2
    # Their slots come back once they are closed.
    wait_until(lambda: health_ok(port), 10, message="a new connection served once the held ones closed")


def test_the_process_cap_answers_503_and_1013(process_capped):
    port = process_capped.longpolling_port
    held = [connect(port) for _ in range(4)]        # silent: they hold their slots for the header time
    try:
        for sock in held:
            sock.sendall(b"GET /websocket/health HTTP/1.1\r\n")
        plain, upgrade = refused_answers(port)
    finally:
        for sock in held:
            sock.close()
    assert re.match(rb"HTTP/1\.1 503 ", plain), plain[:200]
    assert close_frame_code(upgrade) == 1013
    assert metric(port, "rtbus_edge_refusals_total", reason="process") >= 2


def test_behind_a_proxy_the_cap_counts_the_forwarded_client(proxied):
    port = proxied.longpolling_port
    attacker = "X-Forwarded-Host: bus.example.com\r\nX-Forwarded-For: 203.0.113.7\r\n"
    other = "X-Forwarded-Host: bus.example.com\r\nX-Forwarded-For: 198.51.100.9\r\n"
    held = hold(port, 3, attacker)
    try:
        plain, upgrade = refused_answers(port, attacker)
        sock = connect(port)
        try:
            sock.sendall(health_request(port, other + "Connection: close\r\n"))
            served = read_all(sock)
        finally:
            sock.close()
    finally:
        for sock in held:
            sock.close()
    assert re.match(rb"HTTP/1\.1 503 ", plain), plain[:200]
    assert close_frame_code(upgrade) == 1013
    assert served.startswith(b"HTTP/1.1 200"), served[:200]


def test_the_attacks_left_no_traceback_in_the_logs(server, capped, process_capped, proxied):
    for attacked in (server, capped, process_capped, proxied):
        assert "Traceback" not in attacked.log(), attacked.log()[-3000:]
        port = attacked.longpolling_port
        assert health_ok(port)
        # Every attacking connection is gone: the one answering /metrics is all that is left.
        wait_until(lambda: metric(port, "rtbus_edge_connections") == 1, 10,
                   message="rtbus_edge_connections back to 1")
