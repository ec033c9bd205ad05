"""Request bodies are bounded while they are read, chunked ones included: attacked on real
servers, on both server kinds (pywsgi on the evented port, werkzeug on the HTTP workers)."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from serverproc import health_ok
from rtbus.service.process import resident_memory

pytestmark = pytest.mark.timeout(120)

LIMIT = 256 * 1024
PEEK = "/websocket/peek_notifications"


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(f"--http-max-body-size={LIMIT}", name="bodies")


@pytest.fixture(scope="module")
def default_server(module_servers):
    return module_servers(name="bodies-default")


def head(port: int, extra: str) -> bytes:
    return (f"POST {PEEK} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{extra}\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def read_status(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    return answer


def call_padded_to(size: int) -> bytes:
    call = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                       "params": {"channels": [], "last": 0, "is_first_poll": True}}).encode()
    return call + b" " * (size - len(call))


@pytest.mark.parametrize("kind", ["evented", "http worker"])
def test_a_chunked_body_is_refused_once_past_the_limit_without_waiting_for_its_end(server, kind):
    port = server.longpolling_port if kind == "evented" else server.http_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(head(port, "Transfer-Encoding: chunked\r\n"))
        piece = b" " * 16384
        for _ in range(LIMIT // len(piece) + 2):        # the limit and two pieces more...
            sock.sendall(chunk(piece))
        answer = read_status(sock)                       # ...and the body never ends
    finally:
        sock.close()
    assert re.match(rb"HTTP/1\.[01] 413 ", answer), answer[:200]
    assert b"Connection: close" in answer


@pytest.mark.parametrize("kind", ["evented", "http worker"])
def test_a_declared_length_over_the_limit_is_refused_before_the_body(server, kind):
    port = server.longpolling_port if kind == "evented" else server.http_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(head(port, f"Content-Length: {64 << 20}\r\n"))
        answer = read_status(sock)
    finally:
        sock.close()
    assert re.match(rb"HTTP/1\.[01] 413 ", answer), answer[:200]


@pytest.mark.parametrize("kind", ["evented", "http worker"])
@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_body_at_the_limit_is_served(server, kind, framing):
    port = server.longpolling_port if kind == "evented" else server.http_port
    body = call_padded_to(LIMIT)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if framing == "chunked":
            sock.sendall(head(port, "Transfer-Encoding: chunked\r\nConnection: close\r\n")
                         + chunk(body[:100_000]) + chunk(body[100_000:]) + b"0\r\n\r\n")
        else:
            sock.sendall(head(port, f"Content-Length: {len(body)}\r\nConnection: close\r\n") + body)
        answer = read_status(sock)
    finally:
        sock.close()
    assert re.match(rb"HTTP/1\.[01] 200 ", answer), answer[:200]


def test_a_64_mib_chunked_body_does_not_grow_the_evented_process(default_server):
    """Before the bound: +126 MiB of RSS for one such request, read whole before the 413."""
    server = default_server
    (pid,) = server.children_titled("rtbus: gevent")
    before = resident_memory(pid)
    peak = [before]
    sent = threading.Event()

    def sample():
        # Every 5 ms until the request is over; the wait is the sampling period.
        while not sent.wait(0.005):
            peak[0] = max(peak[0], resident_memory(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    port = server.longpolling_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(head(port, "Transfer-Encoding: chunked\r\n"))
        piece = chunk(b" " * 65536)
        for _ in range(64 * 16):
            sock.sendall(piece)
        answer = read_status(sock)
    finally:
        sent.set()
        sampler.join()
        sock.close()
    assert re.match(rb"HTTP/1\.1 413 ", answer), answer[:200]
    grown = peak[0] - before
    assert grown < 16 << 20, f"the gevent process grew by {grown / (1 << 20):.1f} MiB"
    assert health_ok(port)
