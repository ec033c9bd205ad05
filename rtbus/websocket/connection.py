"""One websocket connection on gevent: the I/O around the sans-I/O ServerProtocol.

No greenlet while a connection is idle; while it works, a greenlet for what it works on:

- the *reader*: an io watcher (a callback in the event loop) waits for bytes; when
  some come it stops and spawns a greenlet that reads them, feeds the protocol,
  applies the rate limit and handles client events, then re-arms the watcher and
  ends. Reading stops while that greenlet runs, so frames are handled one read at a
  time and in order (a ping's pong leaves after the subscribe before it);
- the *timers* (ping after `ping_interval` of silence, drop when a ping or close is
  not answered within `response_timeout`, close 4002 at the end of the jittered
  keep-alive lifetime) are one deadline per connection in the hub's TimerQueue (one
  loop timer for the process); a deadline that passes with something to do spawns a
  short greenlet for it;
- *write-through*: a batch put in an empty mailbox is first offered to
  `_write_through`, which sends its shared frame at once from the dispatcher's
  greenlet with one non-blocking send, when nothing is ahead of it and the session
  is known valid without a query. That is the common case, and it costs no queue
  entry, no wake-up and no greenlet switch;
- the *writer* takes encoded batches from the connection's bounded Mailbox
  (filled by ImDispatch, which never blocks) and sends them, re-checking the
  session before each one. It also sends the tail of a write-through frame the
  kernel took only part of, before anything else. It is spawned by that partial
  send or by the mailbox's `on_ready` edge (a
  batch, an overflow or a close reaching a drained mailbox) and waits on a
  gevent Event for the next batch. The next timer check (at most one
  ping interval away) retires it once it has waited `WRITER_IDLE_EXIT` seconds:
  an idle websocket holds no writer greenlet, a busy one pays no spawn and no
  timer per batch.

The end of a connection (`_finish`: unsubscribe, wait for the writer, tell the hub,
then `on_end`) runs once, in the reader's greenlet if one is running, else in one
spawned by `_terminate`; presence may query there.

Both write through `_send_lock`, so frames never interleave. A write first tries
a non-blocking send; only when the kernel buffer is full does it wait, up to
`websocket_send_timeout`. Anything may ask for a close (`close`), from any
greenlet: it sends the close frame and sets a deadline that drops the TCP
connection if the peer never echoes.
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import time

import gevent
import gevent.event
import gevent.lock

from rtbus import errors
from rtbus.errors import ClientError
from rtbus.bus.mailbox import Mailbox
from rtbus.websocket import events
from rtbus.websocket.deflate import DeflateParams
from rtbus.websocket.frames import CloseCode
from rtbus.websocket.protocol import (BinaryMessage, CloseReceived, InvalidState, PingReceived,
                                      PongReceived, ProtocolViolation, ServerProtocol, State,
                                      TextMessage)
from rtbus.websocket.ratelimit import RateLimiter

_logger = logging.getLogger(__name__)

RECV_SIZE = 65536
# Seconds a writer greenlet may wait for the next batch before the reader's next
# timer check retires it; the next batch spawns a new one. Longer than the gaps of any
# steady stream, so a busy connection keeps its writer.
WRITER_IDLE_EXIT = 5.0
MAX_LOGGED_BAD_EVENTS = 3    # per connection; later ones are logged at debug level
# The shortest wait between two timer checks: a deadline that cannot be acted on yet
# must not make its connection spin.
MIN_TIMER_WAIT = 0.05

_ids = itertools.count(1)


def _grants(session) -> tuple:
    """What a session's channels depend on."""
    return session.uid, session.partner_id, session.group_ids


def send_all(sock, data: bytes) -> None:
    """Send all of `data` on a gevent socket, waiting for room up to the socket's timeout.

    One non-blocking send first: gevent's sendall arms a timer and asks the kernel for
    SO_SNDBUF on every call (a getsockopt per 101 was 3.6 % of a handshake ramp's CPU,
    py-spy, issue 17), and the kernel buffer is almost never full; sendall only sends
    what it did not take.
    """
    try:
        sent = sock.send(data, 0, 0.0)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class WebsocketConnection:
    """The server side of one open websocket, served from `start()` until `on_end()`."""

    # Thousands of these live at once, most of them idle: no per-instance dict.
    __slots__ = ("hub", "id", "sock", "session", "dbname", "remote", "protocol", "mailbox",
                 "limiter", "opened_at", "last_activity", "expires_at", "ping_deadline",
                 "close_deadline", "close_code", "_readable", "_initial", "_send_lock",
                 "_terminated", "_subscribed",
                 "_bad_events", "_writer", "_mail", "_writer_parked_since", "_retire_writer",
                 "_unsent", "subscribe_request", "following", "_reader", "_on_end")

    def __init__(self, hub, sock: socket.socket, session, *, remote: str, initial: bytes = b"",
                 deflate: DeflateParams | None = None, on_end=None):
        settings = hub.settings
        self.hub = hub
        self.id = next(_ids)
        self.sock = sock
        self.session = session
        self.dbname = session.dbname
        self.remote = remote
        self.protocol = ServerProtocol(max_message_size=settings.max_message_size, deflate=deflate,
                                       budget=hub.receive_budget)
        # gevent's semaphore itself: the monkey-patched threading.Lock is the same
        # semaphore with a Python acquire around it, about 0.4 µs more per put.
        self.mailbox = Mailbox(settings.mailbox_max_bytes, on_ready=self._on_mail,
                               send_now=self._write_through, lock=gevent.lock.BoundedSemaphore())
        self.limiter = RateLimiter(settings.rate_limit_burst, settings.rate_limit_delay)
        now = time.monotonic()
        self.opened_at = now
        self.last_activity = now
        keep_alive = settings.keep_alive_timeout
        self.expires_at = now + keep_alive + random.uniform(0, keep_alive / 2) if keep_alive else None
        self.ping_deadline: float | None = None
        self.close_deadline: float | None = None   # our close's echo is awaited until then
        self.close_code: int | None = None     # what we closed with (None: the peer closed)
        self._initial = initial
        self._readable = None                  # the read watcher, once started
        self._reader = None                    # the greenlet reading, while one is
        self._on_end = on_end                  # called once the connection is over
        self._send_lock = gevent.lock.Semaphore()
        self._terminated = False
        self.subscribe_request = None          # the last subscribe served (re-authorized on a change)
        self.following = None                  # its SessionFollowers handle, set by the hub
        self._bad_events = 0
        self._writer = None                    # the writer greenlet, while there is one
        self._mail = None                      # its wake-up (a gevent Event), made with it
        self._writer_parked_since: float | None = None   # when it began waiting for a batch
        self._retire_writer = False
        self._unsent = None     # the tail of a write-through frame the kernel did not take

    def __repr__(self) -> str:
        return f"websocket #{self.id} ({self.remote}, {self.session!r})"

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        """Serve the connection from now on and return at once; `on_end()` (given to the
        constructor) is called once it is over, from a greenlet, after the hub forgot it."""
        self.sock.settimeout(self.hub.settings.send_timeout)
        if self._terminated:
            return          # closed before it started: its end is already under way
        self._schedule_timers()
        initial, self._initial = self._initial, b""
        if initial:
            self._reader = gevent.spawn(self._read, initial)
        else:
            self._arm_reader()

    def abort(self) -> None:
        """Drop the TCP connection now, without a close frame (a fast stop)."""
        self._terminate()

    def _finish(self) -> None:
        """The end, once, in a greenlet: everything the connection holds is given back."""
        self.hub.timers.set(self, None)
        self.protocol.discard_input()     # give its partial message back to the budget
        self.hub.dispatcher.unsubscribe(self)
        # Closing the mailbox and the socket ended the writer by itself (the close
        # wakes it); it may be in the middle of a session check.
        writer = self._writer
        if writer is not None:
            writer.join(timeout=self.hub.settings.send_timeout)
        self.hub.forget(self)
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            try:
                on_end()
            except Exception:
                _logger.exception("%s: could not record its end", self)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with `code`; drop TCP if it is not answered in time.

        Safe from any greenlet. A second close while one is pending does nothing.
        """
        if self._terminated or self.protocol.state is not State.OPEN:
            return
        self.close_code = int(code)
        self.hub.count_close(code)
        try:
            with self._send_lock:
                self.protocol.send_close(code, reason)
                self._flush_locked()
        except OSError:
            self._terminate()
            return
        if self.protocol.should_close_transport():
            self._terminate()
            return
        self.close_deadline = time.monotonic() + self.hub.settings.response_timeout
        self._schedule_timers()

    def _terminate_if_open(self, awaited: str) -> None:
        if not self._terminated:
            _logger.info("%s: no answer to our %s within %.0f s; dropping the connection",
                         self, awaited, self.hub.settings.response_timeout)
            self._terminate()

    def _terminate(self) -> None:
        """Drop the TCP connection now (Odoo's 1006 ABNORMAL_CLOSURE: no close frame)."""
        if self._terminated:
            return
        self._terminated = True
        self.mailbox.close()
        readable, self._readable = self._readable, None
        if readable is not None:
            readable.close()      # before the descriptor: a watcher must not outlive it
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._reader is None:
            gevent.spawn(self._finish)    # else the reader finishes, once it is done

    # -- reading ---------------------------------------------------------
    def _arm_reader(self) -> None:
        readable = self._readable
        if readable is None:
            readable = self._readable = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        readable.start(self._on_readable)

    def _on_readable(self) -> None:
        # The read watcher's callback, in the event loop: it must not block. No more is
        # read until the greenlet is done with this.
        readable = self._readable
        if readable is None:
            return          # closed by _terminate after libev had queued this call
        readable.stop()
        self._reader = gevent.spawn(self._read)

    def _read(self, data: bytes | None = None) -> None:
        """Read what the socket holds (or act on `data`, which came with the handshake),
        then wait for more, or finish the connection once it is over."""
        try:
            if not self._terminated:    # it may have been dropped before this ran
                if data is None:
                    data = self._recv()
                if data:
                    self._receive(data)
                # b"": the peer went away without a close frame.
                if data == b"" or self.protocol.should_close_transport():
                    self._terminate()
        except Exception:
            _logger.exception("%s: failed while reading", self)
            self._terminate()
        except BaseException:       # killed: the connection ends with its reader
            self._terminate()
            raise
        finally:
            self._reader = None
            if self._terminated:
                self._finish()
            else:
                self._arm_reader()

    def _recv(self) -> bytes | None:
        """What the socket holds; b"" once the peer is gone or the socket failed, None
        when nothing came after all."""
        try:
            return self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return None
        except OSError:
            return b""

    def _receive(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_activity = now
        before = self.protocol.frames_received
        received = self.protocol.receive_data(data)
        for _ in range(self.protocol.frames_received - before):
            if not self.limiter.allow(now):
                if self.protocol.state is State.OPEN:    # counted and logged once, not per read
                    self.hub.counters["rate_limited"] += 1
                    _logger.info("%s: more than %d frames in %.1f s; closing with 1013", self,
                                 self.limiter.burst, self.limiter.window)
                    self.close(CloseCode.TRY_LATER, "rate limit exceeded")
                return
        for event in received:
            self._handle(event)
            if self._terminated:
                return
        try:
            with self._send_lock:
                self._flush_locked()
        except OSError:
            self._terminate()

    def _handle(self, event) -> None:
        if isinstance(event, (TextMessage, BinaryMessage)):
            message = event.text if isinstance(event, TextMessage) else event.data
            if events.is_probe(message):
                return
            self._handle_message(message)
        elif isinstance(event, PongReceived):
            self.ping_deadline = None
        elif isinstance(event, CloseReceived):
            _logger.debug("%s: closed by the client (%s %s)", self, event.code, event.reason)
        elif isinstance(event, ProtocolViolation):
            self.close_code = int(event.code)
            self.hub.count_close(event.code)
            _logger.info("%s: closing with %d: %s", self, event.code, event.reason)
        elif isinstance(event, PingReceived):
            pass   # the protocol queued the pong

    def _handle_message(self, message: str | bytes) -> None:
        try:
            event = events.parse_event(message)
            self.session = self.hub.sessions.check(self.session)
            self.hub.handle_event(self, event)
        except ClientError as exc:   # a malformed event, refused channels or presence
            self._bad_event(exc)
        except Exception as exc:
            self._fail(exc)

    def reauthorize(self) -> None:
        """Re-check the session after a change was announced: closed with its error's
        code (4001 when revoked, rotated or expired), or subscribed again under its new
        groups, user and partner when they changed."""
        if self._terminated or self.protocol.state is not State.OPEN:
            return
        previous = self.session
        try:
            self.session = self.hub.sessions.check(previous)
            if self.subscribe_request is not None and _grants(self.session) != _grants(previous):
                self.hub.resubscribe(self)
                _logger.info("%s: session changed, channels authorized again", self)
        except Exception as exc:
            self._fail(exc)

    def _bad_event(self, exc: Exception) -> None:
        self._bad_events += 1
        level = logging.WARNING if self._bad_events <= MAX_LOGGED_BAD_EVENTS else logging.DEBUG
        _logger.log(level, "%s: ignored client message: %s", self, exc)

    def _fail(self, exc: Exception) -> None:
        """Close the connection for an error while serving it, with the error's close code."""
        outcome = errors.wire_outcome(exc)
        if outcome is errors.UNEXPECTED:
            _logger.error("%s: unexpected error, closing with 1011", self, exc_info=exc)
            self.close(outcome.close_code)
        else:
            _logger.info("%s: closing with %d: %s", self, outcome.close_code, exc)
            self.close(outcome.close_code, outcome.close_reason)

    # -- timers ----------------------------------------------------------
    def _next_deadline(self) -> float | None:
        """When the timers must next be looked at (monotonic seconds)."""
        candidates = [self.ping_deadline, self.close_deadline]
        if self.protocol.state is State.OPEN:
            candidates.append(self.expires_at)
            if self.ping_deadline is None:
                candidates.append(self.last_activity + self.hub.settings.ping_interval)
        found = [at for at in candidates if at is not None]
        return min(found) if found else None

    def _schedule_timers(self) -> None:
        if self._terminated:
            return
        at = self._next_deadline()
        if at is not None:
            at = max(at, time.monotonic() + MIN_TIMER_WAIT)
        self.hub.timers.set(self, at)

    def timer_due(self) -> None:
        """The hub's TimerQueue: the deadline set last has passed. Called from the event
        loop, so it must not block: anything that may send runs in its own greenlet."""
        if self._terminated:
            return
        now = time.monotonic()
        at = self._next_deadline()
        if at is not None and at <= now:
            gevent.spawn(self._run_timers)
            return
        self._retire_idle_writer(now)     # activity moved the deadline: nothing else is due
        self._schedule_timers()

    def _run_timers(self) -> None:
        """Act on the timers that are due, then set the next deadline."""
        settings = self.hub.settings
        now = time.monotonic()
        if self.close_deadline is not None and now >= self.close_deadline:
            self._terminate_if_open("close")
            return
        if self.ping_deadline is not None and now >= self.ping_deadline:
            self._terminate_if_open("ping")
            return
        if self.protocol.state is State.OPEN:
            if self.expires_at is not None and now >= self.expires_at:
                _logger.debug("%s: keep-alive lifetime reached, closing with 4002", self)
                self.close(CloseCode.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
            elif self.ping_deadline is None and now - self.last_activity >= settings.ping_interval:
                try:
                    with self._send_lock:
                        self.protocol.send_ping()
                        self._flush_locked()
                except (OSError, InvalidState):
                    self._terminate()
                    return
                self.ping_deadline = now + settings.response_timeout
        self._retire_idle_writer(now)
        self._schedule_timers()

    def _retire_idle_writer(self, now: float) -> None:
        parked = self._writer_parked_since
        if parked is not None and now - parked >= WRITER_IDLE_EXIT:
            self._retire_writer = True
            self._mail.set()

    # -- writing ---------------------------------------------------------
    def _flush_locked(self) -> None:
        unsent = self._unsent
        if unsent is not None:
            # The rest of a write-through frame goes first: nothing may cut into it.
            self._unsent = None
            self.sock.sendall(unsent)
        data = self.protocol.data_to_send()
        if data:
            send_all(self.sock, data)
            self.last_activity = time.monotonic()

    def _write_through(self, batch: bytes, since: float | None) -> bool:
        """The mailbox's send_now: send `batch` at once from the greenlet that put it,
        without blocking; False leaves it to the queue and the writer greenlet.

        Taken only when nothing can be ahead of the batch (no writer, so nothing queued
        or half-sent; nobody in the send lock), the connection is open and its session
        is known valid without a query. The kernel taking only part of the frame is the
        one case that needs the writer: it is started to send the rest within the send
        timeout, and the next batches queue behind it, under the usual bounds.
        """
        if (self._writer is not None or self._terminated or self._send_lock.locked()
                or self.protocol.state is not State.OPEN):
            return False
        session = self.hub.sessions.check_cached(self.session)
        if session is None:
            return False
        self.session = session
        frame = self.protocol.send_message(self.hub.outgoing.get(batch))
        data = self.protocol.data_to_send()
        try:
            # The non-blocking socket that gevent's wraps: its send() is this call inside a
            # Python frame, about 0.3 µs per delivery, and we never want it to wait.
            sent = self.sock._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False       # broken: the writer will find out and end the connection
        now = self.last_activity = time.monotonic()
        if sent < len(data):
            self._unsent = memoryview(data)[sent:]
            self._mail = gevent.event.Event()
            self._writer = gevent.spawn(self._writer_loop)
        self.hub.sent.through(frame, since, now)
        return True

    def _on_mail(self, mailbox) -> None:
        # The mailbox's on_ready: a batch, an overflow or a close reached a drained
        # mailbox. Called by whoever put or closed (the dispatcher, _terminate); must
        # not block.
        if self._writer is not None:
            self._mail.set()
        elif not self._terminated:
            self._mail = gevent.event.Event()
            self._writer = gevent.spawn(self._writer_loop)

    def _writer_loop(self) -> None:
        try:
            self._write_batches()
        finally:
            self._writer = None
            self._writer_parked_since = None
            self._retire_writer = False

    def _next_batch(self) -> bytes | None:
        """The next batch to send, waiting for one; None: the writer ends."""
        while True:
            batch = self.mailbox.pop()
            if batch is not None:
                return batch
            # Drained: the next put, overflow or close calls _on_mail, which sets the
            # event. Nothing switches greenlets from pop() to wait(), nor from the
            # last pop() to the end of the writer, so no wake-up falls in between.
            if (self.mailbox.overflowed or self.mailbox.closed or self._terminated
                    or self._retire_writer):
                return None
            self._mail.clear()
            self._writer_parked_since = time.monotonic()
            self._mail.wait()
            self._writer_parked_since = None

    def _write_batches(self) -> None:
        if self._unsent is not None and not self._send_rest():
            return
        while True:
            batch = self._next_batch()
            if batch is None:
                if self.mailbox.overflowed and not self._terminated:
                    self._drop_slow_consumer(f"{self.mailbox.pending_bytes} bytes queued")
                return
            try:
                self.session = self.hub.sessions.check(self.session)
            except Exception as exc:
                self._fail(exc)    # the pending notification is not delivered
                return
            try:
                with self._send_lock:
                    if self.protocol.state is not State.OPEN:
                        return
                    frame = self.protocol.send_message(self.hub.outgoing.get(batch))
                    self._flush_locked()
                self.hub.sent.count(frame, self.mailbox.last_since, False)
            except socket.timeout:
                self._drop_slow_consumer(f"a send blocked for {self.hub.settings.send_timeout:.0f} s")
                return
            except OSError:
                self._terminate()
                return

    def _send_rest(self) -> bool:
        """Send what the kernel did not take of a write-through frame; False: it is over."""
        try:
            with self._send_lock:
                self._flush_locked()
            return True
        except socket.timeout:
            self._drop_slow_consumer(f"a send blocked for {self.hub.settings.send_timeout:.0f} s")
        except OSError:
            self._terminate()
        return False

    def _drop_slow_consumer(self, why: str) -> None:
        self.hub.counters["slow_consumers"] += 1
        _logger.info("%s: slow consumer dropped (%s)", self, why)
        self.close_code = int(CloseCode.TRY_LATER)
        self.hub.count_close(CloseCode.TRY_LATER)
        self._terminate()
