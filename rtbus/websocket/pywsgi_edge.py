"""The evented port's HTTP server: pywsgi, bounded against hostile clients, and the hand-off
of an upgraded connection to the websocket hub.

`EdgeServer` is gevent's WSGIServer with the rules of rtbus.websocket.edge applied: each
connection is counted under the process-wide and per-client caps (answered 503, or 101
then close 1013 for a websocket handshake, once its head is read), and each phase of a
connection has a deadline. One repeating loop timer sweeps every deadline; a connection
past its deadline gets `DeadlinePassed` thrown into its greenlet, which answers 408 (head
or body too slow) or just closes (an idle keep-alive). Request heads are bounded too:
431 beyond `http_max_head_size`.
"""

from __future__ import annotations

import io
import logging
import socket
import time

import gevent
import gevent.pool
from gevent.pywsgi import Input, WSGIHandler, WSGIServer

from rtbus.http.proxy import forwarded_client
from rtbus.http.websocket_route import Accepted
from rtbus.websocket.connection import send_all
from rtbus.websocket.request_headers import RequestHeaders
from rtbus.websocket import frames, handshake
from rtbus.websocket.edge import REFUSAL_SLOTS, ConnectionCounts, Deadlines, EdgeLimits, Phase, Refusal

_logger = logging.getLogger(__name__)
_access_logger = logging.getLogger("rtbus.http.access")

SWEEP_INTERVAL = 0.25      # seconds between two sweeps of the deadlines
# Connections ended by one sweep at most: a thousand stalled together then end over a
# second, not in one burst that would delay every other client of the loop.
SWEEP_BATCH = 250
MAX_HEADER_LINE = 65536    # http.client's own bound on one header line


def _plain(status: str, message: str, *extra: str) -> bytes:
    body = message.encode() + b"\n"
    head = [f"HTTP/1.1 {status}", "Content-Type: text/plain; charset=utf-8", "Connection: close",
            *extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_TIMEOUT = _plain("408 Request Timeout", "the request was not received in time")
_HEAD_TOO_LARGE = _plain("431 Request Header Fields Too Large", "the request head is too large")


class DeadlinePassed(BaseException):
    """Thrown into a connection's greenlet when its phase's deadline passed.

    A BaseException, so that no ``except Exception`` of the application takes it for an
    error of its own; the handler catches it.
    """

    def __init__(self, phase: Phase):
        super().__init__(phase.value)
        self.phase = phase


class EdgeAnswer(ValueError):
    """A request refused once its head is read; `answer` is (status, bytes to send).
    A ValueError, so pywsgi hands it to `_handle_client_error`."""

    def __init__(self, status: str, answer: bytes, why: str):
        super().__init__(why)
        self.answer = (status, answer)


class _Tracked:
    """What the server knows of one connection: its greenlet, phase, counts and body."""

    __slots__ = ("greenlet", "phase", "counted", "client", "refusal", "body")

    def __init__(self, greenlet):
        self.greenlet = greenlet
        self.phase = None
        self.counted = False
        self.client = None
        self.refusal: Refusal | None = None
        self.body: _BodyInput | None = None


class _BodyInput(Input):
    """pywsgi's request body, which knows whether it is being read and whether it was read
    to its end.

    Once `abandoned` (its deadline passed while the application was busy elsewhere), a
    later read raises DeadlinePassed at once and what is left is not discarded: the
    connection closes. Until then, the rest of a body refused 413 is read and dropped
    (like nginx's lingering close), so that a client that sends it all still reads the 413.
    """

    __slots__ = ("abandoned", "reading")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.abandoned = False
        self.reading = False

    def complete(self) -> bool:
        if self.chunked_input:
            return self.chunk_length == 0
        return self.position >= (self.content_length or 0)

    def read(self, length=None):
        return self._reading(super().read, length)

    def readline(self, size=None):
        return self._reading(super().readline, size)

    def _reading(self, method, size):
        if self.abandoned:
            raise DeadlinePassed(Phase.BODY)
        self.reading = True
        try:
            return method(size)
        finally:
            self.reading = False

    def _discard(self):
        if not self.abandoned:
            super()._discard()


class EdgeServer(WSGIServer):
    """WSGIServer with caps and deadlines (`limits`); `stats()` reports them."""

    def __init__(self, listener, application, *, limits: EdgeLimits, **kwargs):
        spawn = (gevent.pool.Pool(limits.max_connections + REFUSAL_SLOTS)
                 if limits.max_connections else "default")
        super().__init__(listener, application, handler_class=EdgeHandler, spawn=spawn, **kwargs)
        self.limits = limits
        self.counts = ConnectionCounts(limits.max_connections, limits.max_per_client)
        self.deadlines = Deadlines()
        self.expired = {phase: 0 for phase in Phase if limits.time_for(phase) is not None}
        self.heads_too_large = 0
        self._sweeper = None
        # Sockets whose websocket owns them now: the end of their handler's greenlet
        # must not close them (`do_close`).
        self.handed_over: set = set()

    def start(self):
        super().start()
        if self._sweeper is None:
            self._sweeper = self.loop.timer(SWEEP_INTERVAL, SWEEP_INTERVAL)
            self._sweeper.start(self._sweep)

    def close(self):
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper.close()
            self._sweeper = None
        super().close()

    def stats(self) -> dict:
        """Connections held, refusals by reason, deadlines passed by phase."""
        return {"connections": self.counts.total, "clients": len(self.counts.clients),
                "refused": {reason.name.lower(): n for reason, n in self.counts.refusals.items()},
                "expired": {phase.value: n for phase, n in self.expired.items()},
                "heads_too_large": self.heads_too_large}

    def do_close(self, sock, *args):
        # Called once the handler's greenlet is done with the socket it was given.
        if sock in self.handed_over:
            self.handed_over.discard(sock)
            return
        super().do_close(sock, *args)

    # -- per connection (called by the handler) --------------------------
    def track(self, address) -> _Tracked:
        tracked = _Tracked(gevent.getcurrent())
        tracked.refusal = self.counts.open()
        tracked.counted = tracked.refusal is None
        if tracked.counted and not self.limits.proxy_mode:
            tracked.client, tracked.refusal = self.counts.claim(address)
        self.enter(tracked, Phase.HEAD)
        return tracked

    def identify(self, tracked: _Tracked, address: str | None) -> None:
        """Count a proxied connection under the client its first request names."""
        if tracked.counted and tracked.client is None and tracked.refusal is None:
            tracked.client, tracked.refusal = self.counts.claim(address)

    def enter(self, tracked: _Tracked, phase: Phase) -> None:
        tracked.phase = phase
        if phase is not Phase.BODY:
            tracked.body = None
        self.deadlines.set(tracked, self.limits.time_for(phase))

    def forget(self, tracked: _Tracked) -> None:
        self.deadlines.set(tracked, None)
        tracked.greenlet = tracked.body = None
        if tracked.counted:
            tracked.counted = False
            self.counts.close()
            self.counts.release(tracked.client)

    # -- the sweep (a loop timer: runs in the hub) -----------------------
    def _sweep(self) -> None:
        for tracked in self.deadlines.due(SWEEP_BATCH):
            try:
                self._expire(tracked)
            except BaseException:       # nothing may escape into the hub
                _logger.exception("could not end a connection past its %s deadline", tracked.phase)

    def _expire(self, tracked: _Tracked) -> None:
        phase = tracked.phase
        body = tracked.body
        if phase is Phase.BODY and body is not None and not body.reading:
            # The application is not waiting for the body (it has it, or works on without
            # it, maybe in the database): never interrupt it there.
            if not body.complete():
                self.expired[phase] += 1
                body.abandoned = True       # its next read raises
            self.enter(tracked, Phase.APP)
            return
        if body is not None:
            body.abandoned = True
        glet = tracked.greenlet
        if glet is None or glet.dead:
            return
        self.expired[phase] += 1
        # From the hub, the throw switches to the connection's greenlet at once: it is
        # still in the phase just checked.
        glet.throw(DeadlinePassed(phase))


class _Upgraded:
    """A websocket's hand-over from its handler: what its end must settle."""

    __slots__ = ("server", "tracked", "access", "started", "sock")

    def __init__(self, server: EdgeServer, tracked: _Tracked, access: tuple, started: float):
        self.server = server
        self.tracked = tracked
        self.access = access
        self.started = started
        self.sock = None

    def ended(self) -> None:
        """Once the websocket is over: its count released, its socket closed, its access
        line written. A second call does nothing."""
        tracked, self.tracked = self.tracked, None
        if tracked is None:
            return
        self.server.forget(tracked)
        if self.sock is not None:
            self.sock.close()
        _access_logger.info('%s "%s" %s %s %s', *self.access, f"{time.time() - self.started:.3f}s")


class EdgeHandler(WSGIHandler):
    """pywsgi's handler with the edge's phases, able to hand an upgraded connection over to
    the websocket hub.

    The ``/websocket`` route answers 101 and leaves ``rtbus.upgrade`` in the environ; once
    the 101 is written, the socket belongs to the websocket layer for the rest of its
    life, and this greenlet ends: an idle websocket has none (rtbus.websocket.connection).
    It is handed over only once pywsgi is done with the request, and after the handler
    has let go of it: its buffered reader (8 KB), the WSGI environ and the werkzeug
    request would otherwise stay alive as long as the websocket. The server is told
    not to close the socket when the handler's greenlet ends (`EdgeServer.do_close`),
    and the connection's count and its access log line are the websocket's to settle
    when it ends (`_Upgraded.ended`).

    ``GET /websocket`` skips the routing map and pywsgi's response writer: the
    application's `upgrade` answers it from the environ, and an accepted handshake's
    101 leaves in one send (`_write_upgrade`); a refusal is written as any response.
    """

    _upgrade = None     # (serve, socket, bytes already read, reader) once a 101 was written
    _tracked: _Tracked | None = None
    _requests = 0

    def handle(self):
        # Headers and body, and back-to-back websocket frames, leave in separate
        # sends: without TCP_NODELAY each small one can wait ~40 ms for the
        # client's delayed ACK (Nagle's algorithm).
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        server = self.server
        tracked = self._tracked = server.track(self._peer())
        handed_over = False
        try:
            try:
                super().handle()
            except (DeadlinePassed, OSError):
                pass        # a refusal or a 408 that could not leave in time
            if self._upgrade is not None:
                server.enter(tracked, Phase.UPGRADED)
                handed_over = self._serve_upgraded(tracked)
        finally:
            if not handed_over:
                server.forget(tracked)

    def _peer(self) -> str | None:
        address = self.client_address
        return address[0] if isinstance(address, tuple) else address

    # -- phases ----------------------------------------------------------
    def handle_one_request(self):
        tracked = self._tracked
        if self._requests:
            # Kept alive: wait for the next request's first byte, idle-bounded.
            self.server.enter(tracked, Phase.IDLE)
            try:
                if not self.rfile.peek(1):
                    return None
            except (DeadlinePassed, OSError, ValueError):
                return None
            self.server.enter(tracked, Phase.HEAD)
        self._requests += 1
        try:
            return super().handle_one_request()
        except DeadlinePassed as exc:       # the head did not come in time
            return self._timed_out(exc.phase)

    def _timed_out(self, phase: Phase):
        self.close_connection = True
        if phase is Phase.IDLE or phase is Phase.CLOSING:
            return None
        self.server.enter(self._tracked, Phase.CLOSING)
        return "408", _TIMEOUT

    def MessageClass(self, fp, *args):
        # pywsgi's own reader (headers_factory) runs the email package over every head.
        return RequestHeaders.read(io.BytesIO(self._read_head(fp)))

    def _read_head(self, fp) -> bytes:
        """The header lines of the request, up to the blank line; 431 past the limit."""
        room = self.server.limits.max_head_size - len(self.requestline or "")
        lines = []
        while True:
            line = fp.readline(min(max(room, 0), MAX_HEADER_LINE) + 1)
            room -= len(line)
            if room < 0:
                self.server.heads_too_large += 1
                raise EdgeAnswer("431", _HEAD_TOO_LARGE,
                                 f"request head over {self.server.limits.max_head_size} bytes")
            lines.append(line)
            if line in (b"\r\n", b"\n", b""):
                return b"".join(lines)

    def read_request(self, raw_requestline):
        result = super().read_request(raw_requestline)
        server, tracked = self.server, self._tracked
        if server.limits.proxy_mode:
            server.identify(tracked, forwarded_client(self.headers.get("X-Forwarded-Host"),
                                                      self.headers.get("X-Forwarded-For")) or self._peer())
        if tracked.refusal is not None:
            raise self._refusal(tracked.refusal)
        if self.content_length or self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            server.enter(tracked, Phase.BODY)
        else:
            server.enter(tracked, Phase.APP)
        return result

    def _refusal(self, refusal: Refusal) -> EdgeAnswer:
        self.server.enter(self._tracked, Phase.CLOSING)
        try:
            key = handshake.check_request(self.command or "", self.headers)
        except handshake.HandshakeError:
            return EdgeAnswer("503", _plain("503 Service Unavailable", refusal.value, "Retry-After: 5"),
                              refusal.value)
        # A browser only sees a close code once the handshake succeeded: 1013, try again later.
        close = frames.Frame(True, frames.Opcode.CLOSE,
                             frames.encode_close(frames.CloseCode.TRY_LATER, refusal.value))
        return EdgeAnswer("101", handshake.response_head(key, reason="Switching Protocols") + close.serialize(),
                          refusal.value)

    def log_error(self, msg, *args):
        # pywsgi calls this only for a request it could not parse (a bad request line or
        # head, already answered 400): the client's doing, so not at ERROR, where any
        # client could write alerting lines at will.
        if args:
            _logger.info("bad request from %s: " + msg, self._peer(), *args)
        else:
            _logger.info("bad request from %s: %s", self._peer(), msg)

    def _handle_client_error(self, ex):
        if isinstance(ex, EdgeAnswer):
            _logger.info("refused %s from %s: %s", self.requestline, self._peer(), ex)
            return ex.answer
        return super()._handle_client_error(ex)

    def handle_error(self, t, v, tb):
        if not isinstance(v, DeadlinePassed):
            super().handle_error(t, v, tb)
            return
        # The body did not come in time (or a handshake did not finish).
        self.close_connection = True
        if v.phase is Phase.CLOSING or self.response_length or self.headers_sent:
            return
        self.server.enter(self._tracked, Phase.CLOSING)
        try:
            self.socket.sendall(_TIMEOUT)
            self.status = "408"
        except (OSError, DeadlinePassed):
            pass

    # -- the websocket hand-off ------------------------------------------
    def _serve_upgraded(self, tracked: _Tracked) -> bool:
        """Hand the socket to the websocket layer; True once it owns the connection."""
        serve, sock, initial, rfile = self._upgrade
        # Its buffered reader goes now: while one is open, closing the socket would
        # leave its descriptor open.
        rfile.close()
        server = self.server
        upgraded = _Upgraded(server, tracked, self._access_fields(), self.time_start)
        # Everything pywsgi kept for the request (environ, headers, the request,
        # the response) goes now; the websocket needs none of it.
        self.__dict__.clear()
        tracked.greenlet = None     # no greenlet serves it from now on
        upgraded.sock = sock
        server.handed_over.add(sock)
        try:
            serve(upgraded.sock, initial, upgraded.ended)
        except Exception:
            _logger.exception("websocket from %s failed", upgraded.access[0])
            upgraded.ended()
        return True

    def get_environ(self):
        environ = super().get_environ()
        original = self.wsgi_input
        body = _BodyInput(original.rfile, original.content_length, socket=original.socket,
                          chunked_input=original.chunked_input)
        self.wsgi_input = body
        if environ.get("wsgi.input") is original:
            environ["wsgi.input"] = body
        if self._tracked is not None and self._tracked.phase is Phase.BODY:
            self._tracked.body = body
        # The long-poll route watches it to notice a client that leaves while it waits.
        environ["rtbus.socket"] = self.socket
        return environ

    def log_request(self):
        # One line per request, like the HTTP workers' (a websocket's when it ends), with the
        # client the application saw: with proxy_mode, the one the proxy forwarded for.
        if self._upgrade is not None:
            return      # logged by _serve_upgraded when the websocket ends
        duration = (f"{self.time_finish - self.time_start:.3f}s"
                    if self.time_finish and self.time_start else "-")
        _access_logger.info('%s "%s" %s %s %s', *self._access_fields(), duration)

    def _access_fields(self) -> tuple:
        """Client, request line, status and length of the access log line."""
        environ = self.environ or {}
        client = environ.get("REMOTE_ADDR") or self._peer()
        status = (self._orig_status or self.status or "000").split()[0]
        return client or "-", self.requestline or "", status, self.response_length or "-"

    def finalize_headers(self):
        if self.code == 101:
            # No body and no length: the stream now carries websocket frames.
            self.connection_upgraded = True
            return
        super().finalize_headers()

    def run_application(self):
        environ = self.environ
        upgrade = getattr(self.application, "upgrade", None)
        if upgrade is not None and environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/websocket":
            # The handshake's own path: no routing map, no werkzeug response, no
            # pywsgi response writer for the 101 (issue 17).
            answer = upgrade(environ)
            if isinstance(answer, Accepted):
                self._write_upgrade(answer)
                return
            self.application = answer       # a refusal: a WSGI response pywsgi writes
        super().run_application()
        upgrade = self.environ.pop("rtbus.upgrade", None)
        if upgrade is None or self.code != 101:
            return
        self._take_socket(upgrade)

    def _write_upgrade(self, answer: Accepted) -> None:
        """Send the 101 in one write and keep the hand-over for handle()."""
        head = answer.head()
        self.code, self._orig_status = 101, "101 SWITCHING PROTOCOLS"
        self.status = self._orig_status.encode("latin-1")
        self.headers_sent = True
        send_all(self.socket, head)
        self.response_length = len(head)
        self._take_socket(answer.serve)

    def _take_socket(self, serve) -> None:
        # handle() serves it once pywsgi is done; without its socket, pywsgi's
        # clean-up leaves the connection open.
        self.close_connection = True
        self._upgrade = (serve, self.socket, self._buffered_input(), self.rfile)
        self.socket = None

    def _buffered_input(self) -> bytes:
        """Bytes the client sent after its request that pywsgi already buffered."""
        rfile = self.rfile
        self.socket.setblocking(False)
        try:
            return rfile.read1(65536) or b""
        except (BlockingIOError, OSError, ValueError):
            return b""
        finally:
            self.socket.setblocking(True)
