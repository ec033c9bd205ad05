"""Listening sockets, bound once by whoever owns them and shared with the children."""

from __future__ import annotations

import errno
import socket

from rtbus.errors import StartupError


def reuseport_available() -> bool:
    """Whether this kernel lets several sockets listen on one port (SO_REUSEPORT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_listener(interface: str, port: int, *, purpose: str, backlog: int = 1024,
                  reuseport: bool = False, listen: bool = True) -> socket.socket:
    """Bind and listen on `interface`:`port`; the socket is non-blocking.

    Forked children share it; an exec'd child gets it only when made inheritable for it.
    With `reuseport`, SO_REUSEPORT is set before the bind, so other sockets of this
    user that set it too can listen on the same port: the kernel then spreads new
    connections over the listening ones (by a hash of the client's address and
    port). With `listen` false the socket is only bound: it holds the port (and
    learns it, for port 0) without taking a share of the connections.

    `purpose` names the service in the error an operator reads ("HTTP",
    "longpolling"). Port 0 binds a free port: read it back with getsockname().
    Raises StartupError when the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        if listen:
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
