"""An echo server built on rtbus's sans-I/O websocket codec, for Autobahn|Testsuite.

The bus server never echoes, so the conformance suite's fuzzing client cannot test it
directly. This harness wraps the very code the bus uses (handshake checks, the
permessage-deflate negotiation, ServerProtocol, OutgoingMessage) around plain blocking
sockets, one thread per connection, and sends every message back as it came: text as
text, binary as binary, compressed when permessage-deflate was negotiated.

    .venv/bin/python scripts/autobahn_echo.py [--port 9001] [--threshold 0]

`scripts/autobahn.py` starts it by itself; run it alone to point any client at it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import socketserver
import sys
import threading

from rtbus.websocket import deflate, handshake
from rtbus.websocket.budget import ReceiveBudget
from rtbus.websocket.frames import Opcode
from rtbus.websocket.protocol import BinaryMessage, ServerProtocol, TextMessage

_logger = logging.getLogger("autobahn_echo")

MAX_HEAD = 65536
RECV_SIZE = 65536
# Autobahn's 9.* cases send messages of up to 16 MiB; 10.* expects them to be accepted.
MAX_MESSAGE_SIZE = 64 << 20


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request head (without its blank line) and whatever followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > MAX_HEAD:
            raise ConnectionError("no complete request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def parse_head(head: bytes) -> tuple[str, dict[str, str], list[str]]:
    """(method, headers with the first value of each name, Sec-WebSocket-Extensions lines)."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    extensions = []
    for line in lines:
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        headers.setdefault(name.lower(), value)
        if name.lower() == "sec-websocket-extensions":
            extensions.append(value)
    return request_line.split(" ", 1)[0], headers, extensions


class EchoHandler(socketserver.BaseRequestHandler):
    server: "EchoServer"

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            head, rest = read_head(sock)
            method, headers, offers = parse_head(head)
            # Odoo's rule requires an Origin; Autobahn's client does not send one.
            headers.setdefault("origin", "http://autobahn.test")
            try:
                key = handshake.check_request(method, headers)
            except handshake.HandshakeError as exc:
                sock.sendall(f"HTTP/1.1 {exc.status} Refused\r\nContent-Length: 0\r\n"
                             f"Connection: close\r\n\r\n".encode())
                return
            agreed = deflate.negotiate(offers) if self.server.policy is not None else None
            extensions, params = agreed if agreed is not None else (None, None)
            lines = ["HTTP/1.1 101 Switching Protocols"]
            lines += [f"{name}: {value}" for name, value in handshake.response_headers(key, extensions)]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            self.echo(sock, ServerProtocol(MAX_MESSAGE_SIZE, deflate=params, budget=self.server.budget),
                      rest)
        except (ConnectionError, OSError) as exc:
            _logger.debug("connection ended: %s", exc)

    def echo(self, sock: socket.socket, protocol: ServerProtocol, data: bytes) -> None:
        policy = self.server.policy
        try:
            while True:
                if data:
                    for event in protocol.receive_data(data):
                        if isinstance(event, TextMessage):
                            message = deflate.OutgoingMessage(event.text.encode("utf-8"), policy)
                        elif isinstance(event, BinaryMessage):
                            message = deflate.OutgoingMessage(event.data, policy, Opcode.BINARY)
                        else:
                            continue
                        if not protocol.close_sent:
                            protocol.send_message(message)
                    out = protocol.data_to_send()
                    if out:
                        sock.sendall(out)
                    if protocol.should_close_transport():
                        return
                data = sock.recv(RECV_SIZE)
                if not data:
                    return
        finally:
            protocol.discard_input()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], threshold: int | None):
        super().__init__(address, EchoHandler)
        self.policy = None if threshold is None else deflate.CompressionPolicy(threshold=threshold)
        self.budget = ReceiveBudget(0)

    @property
    def port(self) -> int:
        return self.server_address[1]


def start(port: int = 0, threshold: int | None = 0) -> EchoServer:
    """Start an echo server on 127.0.0.1:`port` in a thread; `threshold` None: no deflate."""
    server = EchoServer(("127.0.0.1", port), threshold)
    threading.Thread(target=server.serve_forever, name="autobahn-echo", daemon=True).start()
    return server


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--port", type=int, default=9001)
    options.add_argument("--threshold", type=int, default=0,
                         help="messages shorter than this are echoed uncompressed (default 0)")
    options.add_argument("--no-deflate", action="store_true", help="decline permessage-deflate")
    args = options.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    server = EchoServer(("127.0.0.1", args.port), None if args.no_deflate else args.threshold)
    _logger.info("echo server on ws://127.0.0.1:%d", server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
