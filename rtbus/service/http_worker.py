"""An HTTP worker: a forked child serving one request at a time from the shared socket.

Limits, checked between requests: the master pid (a worker outlives no master),
``limit_request`` (recycle after that many requests), ``limit_memory_soft``
(recycle when the process grew past it), ``limit_memory_hard`` (RLIMIT_AS),
``limit_time_cpu`` (CPU seconds per request, SIGXCPU). ``limit_time_real`` is
the master's business: it kills a worker whose heartbeat stops for that long.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

from rtbus.service import process
from rtbus.service.child import ChildProcess
from rtbus.service.heartbeat import HeartbeatWriter

_logger = logging.getLogger(__name__)
_access_logger = logging.getLogger("rtbus.http.access")


class CpuTimeExceeded(Exception):
    """The current request used more than ``limit_time_cpu`` seconds of CPU."""


class _RequestHandler(WSGIRequestHandler):
    """werkzeug's handler with plain access-log lines and a socket timeout."""

    def address_string(self) -> str:
        # The client as the application saw it: with proxy_mode, the one nginx forwarded for.
        environ = getattr(self, "environ", None)
        if environ and environ.get("REMOTE_ADDR"):
            return environ["REMOTE_ADDR"]
        return super().address_string()

    def log_request(self, code="-", size="-"):
        _access_logger.info('%s "%s" %s %s', self.address_string(), self.requestline, code, size)

    def log_error(self, format, *args):
        _access_logger.info("%s " + format, self.address_string(), *args)

    def log_message(self, format, *args):
        _access_logger.info("%s " + format, self.address_string(), *args)


class _Server(BaseWSGIServer):
    """A werkzeug server around an already-listening socket it does not own."""

    def __init__(self, listener: socket.socket, app, socket_timeout: float):
        handler = type("RequestHandler", (_RequestHandler,), {"timeout": socket_timeout})
        host, port = listener.getsockname()[:2]
        super().__init__(host, port, app, handler=handler, fd=listener.fileno())


class _Reporting:
    """WSGI middleware telling the master which request the worker is serving."""

    def __init__(self, app, heartbeat: HeartbeatWriter):
        self.app = app
        self.heartbeat = heartbeat
        self.current: str | None = None

    def __call__(self, environ, start_response):
        self.current = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"
        self.heartbeat.request_started(self.current)
        return self.app(environ, start_response)


class HttpWorker(ChildProcess):
    """One HTTP worker process: a request per tick. `run()` returns the exit code."""

    kind = "http"
    title = "rtbus: http worker"
    name = "http worker"
    SIGNALS = (*ChildProcess.SIGNALS, signal.SIGXCPU)

    def __init__(self, config, heartbeat: HeartbeatWriter, master_pid: int, listener: socket.socket):
        super().__init__(config, heartbeat, master_pid, listener)
        self.requests = 0
        self._reporting: _Reporting | None = None

    def handle_xcpu(self) -> None:
        self.alive = False
        raise CpuTimeExceeded(f"CPU time limit exceeded ({self.config.limit_time_cpu} s)")

    def limit_reached(self) -> str | None:
        limit = self.config.limit_request
        if limit and self.requests >= limit:
            return f"limit_request reached ({self.requests} requests)"
        return super().limit_reached()

    def setup(self) -> None:
        from rtbus.http.app import Application
        from rtbus.service.services import build

        config = self.config
        self.services = build(config, "http",
                              extra_figures=lambda: {"rtbus_http_requests_total": self.requests})
        self.app = Application(self.services)
        self.snapshots = self.services.snapshots
        self._reporting = _Reporting(self.app, self.heartbeat)
        self.server = _Server(self.listener, self._reporting, config.http_socket_timeout)
        _logger.debug("http worker %d ready", os.getpid())

    def teardown(self) -> None:
        self.services.close()
        self.server.socket.close()

    def tick(self) -> None:
        """Wait up to BEAT for a connection and serve it."""
        if self.listener not in self.wait_readable([self.listener], self.BEAT) or not self.alive:
            return
        server = self.server
        try:
            client, address = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return   # another worker won the race for this connection
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        process.set_cpu_budget(self.config.limit_time_cpu)
        try:
            server.process_request(client, address)
        except CpuTimeExceeded as exc:
            _logger.error("http worker %d: %s while serving %s; exiting",
                          os.getpid(), exc, self._reporting.current if self._reporting else "?")
            server.shutdown_request(client)
        except OSError as exc:
            # The client went away mid-request: its problem, not the worker's.
            _logger.debug("http worker %d: connection from %s lost: %s", os.getpid(), address, exc)
            server.shutdown_request(client)
        finally:
            self.requests += 1
            self.heartbeat.request_done()
