"""The evented process: websockets and long-polls on gevent.

Two modes, one code path:

- ``gevent``: the longpolling process under the prefork master. It inherits the
  listening socket, its heartbeat pipe and its configuration (as JSON, over a
  pipe, so no secret shows in its environment or command line).
- ``single``: ``--workers 0``. The one process serves every route on
  ``http_port``, runs the cron jobs in a greenlet and owns the database
  bootstrap (including an embedded cluster).

On SIGTERM/SIGINT it stops accepting, runs its stop hooks (the websocket layer
closes its connections with 1001 in batches there), waits up to
``graceful_timeout`` for requests in flight, and exits 0: the master never has
to SIGKILL it. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

import gevent
import gevent.event

from rtbus.config import Config
from rtbus.errors import ConfigError, StartupError
from rtbus.log import log_notes, setup_logging
from rtbus.service import process
from rtbus.service.heartbeat import HeartbeatWriter

_logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0   # the master's watchdog counts from the last one
WATCHDOG_INTERVAL = 2.0    # memory and parent checks


class EventedServer:
    """One evented process; `run()` blocks until it stops and returns the exit code."""

    def __init__(self, config, *, mode: str, listener=None, heartbeat: HeartbeatWriter | None = None,
                 master_pid: int | None = None, worker: int = 0):
        if mode not in ("gevent", "single"):
            raise ValueError(f"unknown mode {mode!r}")
        self.config = config
        self.mode = mode
        self.listener = listener
        self.heartbeat = heartbeat
        self.master_pid = master_pid
        self.worker = worker            # its number among the gevent workers (metrics label)
        self.stop_hooks: list = []      # callables run first on a graceful stop
        self._stopping = gevent.event.Event()
        self._fast = False
        self._database = None
        self._runtime_dir: str | None = None   # claimed by single mode, released at its stop
        self.services = None    # rtbus.service.services.Services, built at start
        self.app = None
        self.server = None      # the EdgeServer on the listening socket

    # -- lifecycle -------------------------------------------------------
    def run(self) -> int:
        config = self.config
        process.set_title(f"rtbus: gevent {self.worker}" if self.mode == "gevent" else "rtbus: single")
        process.raise_open_files_limit()
        process.set_memory_hard_limit(config.effective("limit_memory_hard_gevent"))
        if self.mode == "single":
            self._bootstrap()
        try:
            self._start()
            self._stopping.wait()
            self._stop()
        finally:
            if self._database is not None:
                self._database.close()
        return process.EXIT_OK

    def _bootstrap(self) -> None:
        from rtbus.service import runtime
        from rtbus.service.bootstrap import open_database
        from rtbus.service.sockets import bind_listener

        self._database = open_database(self.config)
        self.config = self._database.config
        try:
            self.listener = bind_listener(self.config.http_interface, self.config.http_port, purpose="HTTP")
            self._runtime_dir = runtime.claim(self.config, self.listener.getsockname()[1])
        except (StartupError, ConfigError):
            if self.listener is not None:
                self.listener.close()
            self._database.close()
            raise
        self._runtime_default = not self.config.runtime_dir
        self.config = self.config.replace(runtime_dir=self._runtime_dir)

    def _start(self) -> None:
        from rtbus.http.app import Application
        from rtbus.metrics import collect
        from rtbus.service.services import build
        from rtbus.websocket.edge import EdgeLimits
        from rtbus.websocket.pywsgi_edge import EdgeServer

        config = self.config
        extra = (lambda: {"worker": self.worker}) if self.mode == "gevent" else None
        self.services = build(config, self.mode, extra_figures=lambda: collect.edge_figures(self.server),
                              snapshot_extra=extra)
        self.app = Application(self.services)
        if not self.services.dispatcher.start(wait=10.0):
            _logger.warning("LISTEN imbus is not up yet; the dispatcher keeps retrying in the background")
        # Held long-polls first: they answer at once, websockets close in batches.
        self.stop_hooks.append(self.services.longpolls.close_all)
        self.stop_hooks.append(self.services.hub.close_all)
        self.server = EdgeServer(
            self.listener, self.app, limits=EdgeLimits.from_config(config),
            log=logging.getLogger("rtbus.http.access"),
            error_log=logging.getLogger("rtbus.http.error"),
        )
        self.server.start()
        host, port = self.listener.getsockname()[:2]
        if self.mode == "gevent":
            _logger.info("evented service (longpolling) running on %s:%d (gevent worker %d, pid %d)",
                         host, port, self.worker, os.getpid())
            gevent.spawn(self._heartbeat_loop)
        else:
            _logger.info("rtbus single process %d serving every route on %s:%d", os.getpid(), host, port)
            gevent.spawn(self._cron_loop)
        gevent.spawn(self._watchdog_loop)
        if self.services.snapshots is not None:
            gevent.spawn(self._snapshot_loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        gevent.signal_handler(signal.SIGQUIT, self._stop_now, "SIGQUIT")

    def request_stop(self, why: str) -> None:
        """Begin a graceful stop; a second request makes it fast."""
        if self._stopping.is_set():
            self._stop_now(f"second {why}")
            return
        _logger.info("%s: stopping gracefully", why)
        self._stopping.set()

    def _stop_now(self, why: str) -> None:
        _logger.info("%s: stopping fast", why)
        self._fast = True
        self._stopping.set()
        if self.server is not None:
            self.server.pool.kill(block=False)

    def _stop(self) -> None:
        server = self.server
        server.close()   # stop accepting; connections in flight go on
        for hook in self.stop_hooks:
            if self._fast:
                break
            try:
                hook()
            except Exception:
                _logger.exception("error in a stop hook")
        timeout = 0 if self._fast else self.config.graceful_timeout
        active = len(server.pool)
        if active:
            _logger.info("waiting up to %.0f s for %d connections", timeout, active)
        server.stop(timeout=timeout)
        self.services.close()
        if self._runtime_dir is not None:
            from rtbus.service import runtime
            runtime.release(self._runtime_dir, remove_dir=self._runtime_default)
        _logger.info("evented process %d stopped", os.getpid())

    # -- background greenlets --------------------------------------------
    def _heartbeat_loop(self) -> None:
        # Runs on the event loop it vouches for: a loop blocked by busy work
        # stops these beats, and the master (another process) notices.
        while not self._stopping.is_set():
            self.heartbeat.beat()
            gevent.sleep(HEARTBEAT_INTERVAL)

    def _snapshot_loop(self) -> None:
        writer = self.services.snapshots
        while not self._stopping.is_set():
            writer.write()
            self._stopping.wait(timeout=writer.interval)

    def _watchdog_loop(self) -> None:
        soft = self.config.effective("limit_memory_soft_gevent")
        while not self._stopping.is_set():
            gevent.sleep(WATCHDOG_INTERVAL)
            if self.master_pid is not None and os.getppid() != self.master_pid:
                self.request_stop("the master process is gone")
            elif soft and process.virtual_memory() > soft:
                self.request_stop(f"limit_memory_soft_gevent reached ({process.virtual_memory()} > {soft} bytes)")

    def _cron_loop(self) -> None:
        runner = self.services.cron
        if runner is None:
            return
        while not self._stopping.is_set():
            wait = runner.run_pending()
            self._stopping.wait(timeout=wait)


def _child_fds() -> dict[str, int]:
    spec = os.environ.pop("RTBUS_CHILD_FDS", "")
    fds = {}
    for item in spec.split(","):
        if "=" in item:
            name, value = item.split("=", 1)
            fds[name] = int(value)
    return fds


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """Run the evented process; see the module docstring for the modes."""
    from rtbus.db.green import make_psycopg_green

    mode = argv[0] if argv else "gevent"
    fds = _child_fds()
    worker = int(os.environ.pop("RTBUS_GEVENT_WORKER", "0") or 0)
    try:
        config = Config.from_json(_read_all(fds["config"]))
    except (KeyError, OSError, ValueError, ConfigError) as exc:
        print(f"rtbus evented process: no usable configuration handed over: {exc}", flush=True)
        return process.EXIT_WORKER_FATAL
    setup_logging(config.log_level, config.logfile)
    make_psycopg_green()
    if mode == "single":
        log_notes(_logger, config.notes)
        server = EventedServer(config, mode="single")
    else:
        listener = socket.socket(fileno=fds["listen"])
        listener.setblocking(False)
        server = EventedServer(config, mode="gevent", listener=listener,
                               heartbeat=HeartbeatWriter(fds["heartbeat"]), master_pid=os.getppid(),
                               worker=worker)
    try:
        return server.run()
    except StartupError as exc:
        _logger.error("%s", exc)
        if config.logfile:   # the operator at the terminal must see it too
            print(f"rtbus-server: error: {exc}", file=sys.stderr, flush=True)
        return process.EXIT_STARTUP
