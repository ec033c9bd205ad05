"""Make psycopg2 cooperate with gevent: database waits yield to other greenlets."""

from __future__ import annotations

import psycopg2
from psycopg2 import extensions


def _wait(conn, timeout=None):
    from gevent.socket import wait_read, wait_write

    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            wait_read(conn.fileno(), timeout=timeout)
        elif state == extensions.POLL_WRITE:
            wait_write(conn.fileno(), timeout=timeout)
        else:
            raise psycopg2.OperationalError(f"unexpected state from poll(): {state!r}")


def make_psycopg_green() -> None:
    """Install the wait callback: every libpq wait goes through gevent's hub.

    Call once per process, after gevent's monkey patching. Connections then
    run in asynchronous mode under the hood, which is why a greenlet blocked on
    a slow query does not block the event loop.
    """
    if extensions.get_wait_callback() is None:
        extensions.set_wait_callback(_wait)
