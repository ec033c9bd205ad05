"""The bench's clients on gevent sockets: websockets and long-polls.

Kept cheap so that the server, not the bench, is what gets measured: websockets
are read by one `Reactor` greenlet over an epoll set, frames are walked without
copying payloads, notifications are found by a regular expression over the raw
frame (see `wire`), and all clients share one `Meter`. Long-polls, which get one
answer per round trip, use a greenlet each. No read carries its own timer: the
drill bounds every stage and closes what is left.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import select
import socket as _socket
import struct
import time
import urllib.parse

import gevent
from gevent import socket
from gevent.socket import wait_read

from rtbus.bench import wire
from rtbus.bench.accounting import Meter, Received
from rtbus.websocket.frames import Opcode, ProtocolError, decode_close

RECV_SIZE = 262144
ABNORMAL_CLOSURE = 1006          # the connection ended without a close frame
_LINGER_RESET = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends a RST
_ANY_ID_RE = re.compile(rb'"id":(\d+)')


@dataclasses.dataclass
class ClientContext:
    """What every client shares: where to go, how long to wait, and the current meter."""

    target: wire.Target
    origin: str
    base: int                           # the run's first id; ids are booked above it
    cookie: str | None = None
    db: str | None = None
    connect_timeout: float = 10.0
    poll_timeout: float = 65.0
    deflate: bool = False               # websockets offer permessage-deflate
    # False against Nchan: its websocket location names the channel, and a client message
    # there is a publish attempt (closed with 1008).
    subscribe: bool = True
    meter: Meter = dataclasses.field(default_factory=Meter)
    polls_held: int = 0                 # long-polls sent and not yet answered


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, wire.WireError):
        return exc.kind
    if isinstance(exc, (_socket.timeout, gevent.Timeout)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, f"errno-{exc.errno}")
    return type(exc).__name__


def _reset_and_close(sock) -> None:
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class _Client:
    """What both kinds share: identity, channel, received ids and catch-up tracking."""

    kind = ""

    def __init__(self, index: int, channel_index: int, channel: str, ctx: ClientContext):
        self.index = index
        self.channel_index = channel_index
        self.channel = channel
        self.ctx = ctx
        self.received = Received(ctx.base)
        self.connected = False
        self.catchup_target = 0           # an id to wait for after a reconnect, 0: none
        self.caught_up_at: float | None = None

    @property
    def last(self) -> int:
        """The `last` to resume from: the highest id received, else the run's base."""
        return max(self.received.max_id, self.ctx.base)

    def _book(self, pairs, now: float) -> int:
        top = self.received.record(pairs, now, self.ctx.meter, self.kind)
        if self.catchup_target and top >= self.catchup_target:
            self.caught_up_at = now
            self.catchup_target = 0
        return top


class Reactor:
    """Reads every open websocket from one greenlet.

    A greenlet per connection costs a hub switch and a watcher per read; with
    thousands of clients each receiving every notification, that alone would make the
    bench the bottleneck. Instead, each socket is registered in one epoll set, the
    greenlet waits (through gevent) for that set's own descriptor to be readable, and
    then reads every ready socket in a row.
    """

    WAIT = 1.0          # seconds; the loop re-checks `running` at least this often
    MAX_EVENTS = 4096

    def __init__(self):
        self.epoll = select.epoll()
        self.clients: dict[int, WebsocketClient] = {}
        self.running = True
        self.loop = gevent.spawn(self._run)

    def add(self, client: "WebsocketClient") -> None:
        fd = client.sock.fileno()
        self.clients[fd] = client
        self.epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self.clients.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass

    def close(self) -> None:
        self.running = False
        self.loop.kill(block=False)
        self.epoll.close()

    def _run(self) -> None:
        epoll_fd = self.epoll.fileno()
        while self.running:
            try:
                wait_read(epoll_fd, timeout=self.WAIT)
            except _socket.timeout:
                continue
            for fd, _events in self.epoll.poll(0, self.MAX_EVENTS):
                client = self.clients.get(fd)
                if client is not None:
                    client.on_readable(fd)


class WebsocketClient(_Client):
    """One websocket subscribed to one channel, read by the shared Reactor."""

    kind = "ws"

    def __init__(self, index: int, channel_index: int, channel: str, ctx: ClientContext,
                 reactor: Reactor):
        super().__init__(index, channel_index, channel, ctx)
        self.reactor = reactor
        self.sock = None
        self.pending = b""           # the start of an incomplete frame
        self.close_code: int | None = None

    def open(self, last: int) -> bool:
        """Connect, shake hands, subscribe from `last`, start reading; False on failure
        (counted in the meter's errors by kind). Bounded by the connect timeout."""
        ctx = self.ctx
        started = time.perf_counter()
        key = wire.new_key()
        sock = None
        try:
            sock = socket.create_connection((ctx.target.host, ctx.target.port),
                                            timeout=ctx.connect_timeout)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock.sendall(wire.handshake_request(ctx.target, key, origin=ctx.origin,
                                                cookie=ctx.cookie, db=ctx.db, deflate=ctx.deflate))
            head, rest = _read_head(sock)
            wire.check_handshake(head, key)
            if ctx.subscribe:
                sock.sendall(wire.subscribe_frame([self.channel], last))
        except Exception as exc:   # every failure is a counted outcome, not a crash
            ctx.meter.errors[_error_kind(exc)] += 1
            if sock is not None:
                _reset_and_close(sock)
            return False
        ctx.meter.handshake.record(time.perf_counter() - started)
        ctx.meter.connects += 1
        self.sock, self.connected, self.close_code, self.pending = sock, True, None, b""
        self.reactor.add(self)
        if rest:
            self._receive(rest)
        return True

    def drop(self) -> None:
        """Lose the connection at once (a RST, as when a network path dies)."""
        sock, self.sock = self.sock, None
        self.connected = False
        if sock is not None:
            self.reactor.remove(sock.fileno())
            _reset_and_close(sock)

    def on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.ctx.meter.errors["read-" + _error_kind(exc)] += 1
            self._ended(ABNORMAL_CLOSURE)
            return
        if not data:
            self._ended(ABNORMAL_CLOSURE)
            return
        self.ctx.meter.wire_bytes += len(data)
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Walk the complete frames in the pending bytes + `data`; scan text frames
        for notifications in place (no payload copies), act on control frames."""
        if self.pending:
            data = self.pending + data
        pos, size, pairs = 0, len(data), []
        while size - pos >= 2:
            second = data[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode <= Opcode.TEXT and data[pos] & 0x40:      # RSV1: compressed
                pairs.extend(wire.scan_notifications(wire.inflate(data[pos + head:end])))
            elif opcode <= Opcode.TEXT:
                pairs.extend(wire.scan_notifications(data, pos + head, end))
            elif not self._on_control(opcode, data[pos + head:end]):
                break           # closed: what came before the close still counts
            pos = end
        self.pending = data[pos:] if pos < size and self.sock is not None else b""
        if pairs:
            self._book(pairs, time.time())

    def _on_control(self, opcode: int, payload: bytes) -> bool:
        """Answer a ping, end on a close; False when the connection is over."""
        sock = self.sock
        if sock is None:
            return False
        if opcode == Opcode.PING:
            sock.sendall(wire.pong_frame(payload))
        elif opcode == Opcode.CLOSE:
            try:
                code = int(decode_close(payload)[0])
            except ProtocolError:
                code = ABNORMAL_CLOSURE
            try:
                sock.sendall(wire.close_frame(code if code != ABNORMAL_CLOSURE else 1000))
            except OSError:
                pass
            self._ended(code)
            return False
        return True

    def _ended(self, code: int) -> None:
        self.close_code = code
        self.ctx.meter.closes[code] += 1
        self.drop()


def _read_head(sock) -> tuple[bytes, bytes]:
    """Read an HTTP response head; return (head, bytes after it)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise wire.WireError("eof-in-handshake")
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[:end], data[end + 4:]
        if len(data) > wire.MAX_HEAD_BYTES:
            raise wire.WireError("bad-response", "response head too large")


class LongPollClient(_Client):
    """One long-polling loop on one channel, over a keep-alive HTTP connection."""

    kind = "lp"
    PATH = "/longpolling/poll"
    RETRY_DELAY = 0.5

    def __init__(self, index: int, channel_index: int, channel: str, ctx: ClientContext):
        super().__init__(index, channel_index, channel, ctx)
        self.sock = None
        self.loop = None
        self.running = False
        self.polls = 0
        self._last = ctx.base

    @property
    def last(self) -> int:
        return max(self._last, self.ctx.base)

    def start(self, last: int) -> None:
        self._last = last
        self.running = True
        self.loop = gevent.spawn(self._poll_loop)

    def stop(self) -> None:
        self.running = False
        self.drop()

    def drop(self) -> None:
        """Cut the connection; the loop, if running, polls again from its `last`."""
        sock, self.sock = self.sock, None
        self.connected = False
        if sock is not None:
            _reset_and_close(sock)

    def _poll_loop(self) -> None:
        while self.running:
            try:
                body = self._poll_once()
            except Exception as exc:   # counted, then retried after a pause
                if self.running and self.sock is not None:
                    self.ctx.meter.errors["poll-" + _error_kind(exc)] += 1
                    self.drop()
                    gevent.sleep(self.RETRY_DELAY)
                continue
            if body is not None:
                self._on_result(body)

    def _poll_once(self) -> bytes | None:
        ctx = self.ctx
        if self.sock is None:
            self.sock = socket.create_connection((ctx.target.host, ctx.target.port),
                                                 timeout=ctx.connect_timeout)
            self.sock.settimeout(ctx.poll_timeout)
            self.connected = True
            ctx.meter.connects += 1
        sock = self.sock
        reader = wire.HttpResponseReader()
        path = self.PATH + ("?" + urllib.parse.urlencode({"db": ctx.db}) if ctx.db else "")
        sock.sendall(wire.jsonrpc_request(ctx.target, path,
                                          {"channels": [self.channel], "last": self._last}))
        ctx.polls_held += 1
        try:
            response = None
            while response is None:
                data = sock.recv(RECV_SIZE)
                response = reader.feed(data) if data else reader.eof()
                if not data and response is None:
                    raise wire.WireError("eof-in-poll")
        finally:
            ctx.polls_held -= 1
        status, keep_alive, body = response
        self.polls += 1
        if not keep_alive:
            self.drop()
        if status != 200:
            ctx.meter.errors[f"poll-http-{status}"] += 1
            gevent.sleep(self.RETRY_DELAY)
            return None
        return body

    def _on_result(self, body: bytes) -> None:
        if b'"result":' not in body:
            self.ctx.meter.errors["poll-rpc-error"] += 1
            gevent.sleep(self.RETRY_DELAY)
            return
        pairs = wire.scan_notifications(body)
        if pairs:
            self._book(pairs, time.time())
        ids = _ANY_ID_RE.findall(body)
        if ids:   # foreign notifications move `last` too, or they would come back forever
            self._last = max(self._last, max(map(int, ids)))
