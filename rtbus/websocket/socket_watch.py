"""Noticing that a long-poll's client left while its poll is held.

It lives beside the evented port's pywsgi handler (`pywsgi_edge`), which puts the
connection's socket in the environ as ``rtbus.socket``: the route in http/ only asks for
a watch and never touches gevent. gevent is imported when a watch starts, so HTTP
workers, which load the route but never hold a poll, never import it.
"""

from __future__ import annotations

import contextlib
import functools
import socket

from rtbus.bus.poll import Poll

_READ = 1      # libev/libuv "readable" event mask


def departure_watch(environ):
    """A `watch` for LongPolls.wait: None when the server gives no socket (tests, WSGI
    servers other than ours)."""
    sock = environ.get("rtbus.socket")
    return None if sock is None else functools.partial(_watching, sock)


@contextlib.contextmanager
def _watching(sock, held: Poll):
    # An event-loop watcher, not a greenlet: a held poll then costs no second stack.
    # It fires once, on readability; the check runs in a greenlet spawned only then.
    import gevent

    watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
    watcher.start(_on_readable, watcher, sock, held)
    try:
        yield
    finally:
        watcher.stop()
        watcher.close()


def _on_readable(watcher, sock, held: Poll) -> None:
    import gevent

    watcher.stop()          # runs in the event loop: nothing here may block
    gevent.spawn(_check_departure, sock, held)


def _check_departure(sock, held: Poll) -> None:
    """Abandon `held` when its client closed the connection.

    While a poll waits, the client has nothing more to send: a readable socket means
    end of stream (b"" on a peek) or a reset. A client that does send something (a
    pipelined request) is left alone; pywsgi reads it after the answer.
    """
    try:
        left = sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):     # reset by the peer, or already closed here
        left = True
    if left:
        held.abandon()
