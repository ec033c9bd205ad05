"""Listening sockets, bound once by whoever owns them and shared with the children."""

from __future__ import annotations

import errno
import socket

from rtbus.errors import StartupError


def bind_listener(interface: str, port: int, *, purpose: str, backlog: int = 1024) -> socket.socket:
    """Bind and listen on `interface`:`port`; the socket is non-blocking.

    Forked children share it; an exec'd child gets it only when made inheritable for it.

    `purpose` names the service in the error an operator reads ("HTTP",
    "longpolling"). Port 0 binds a free port: read it back with getsockname().
    Raises StartupError when the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen for {purpose} on {interface}:{port}: the port is already in use "
                f"(another rtbus or Odoo? choose another port or stop that process)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(
                f"cannot listen for {purpose} on {interface}:{port}: "
                f"{interface} is not an address of this machine"
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(
                f"cannot listen for {purpose} on {interface}:{port}: permission denied "
                f"(ports below 1024 need privileges)"
            ) from None
        raise StartupError(f"cannot listen for {purpose} on {interface}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    """``host:port`` of a bound socket, for logs."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
