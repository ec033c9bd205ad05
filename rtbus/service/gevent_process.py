"""The evented process: websockets and long-polls on gevent, on the child skeleton.

Two classes, one code path (`rtbus.service.child` has the hierarchy):

- `EventedProcess`, a gevent worker under the prefork master. It inherits the
  listening socket, its heartbeat pipe and its configuration (as JSON, over a
  pipe, so no secret shows in its environment or command line).
- `SingleProcess`, ``--workers 0``. The one process serves every route on
  ``http_port``, runs the cron jobs in a greenlet and owns the database
  bootstrap (including an embedded cluster). No master, so no heartbeat.

Both run `GreenletLoop`: the skeleton's heartbeat, limit checks and snapshot as
greenlets on the hub, signals through gevent's handlers. On SIGTERM/SIGINT the process
stops accepting, runs its stop hooks (the websocket layer closes its connections with
1001 in batches there), waits up to ``graceful_timeout`` for requests in flight, and
exits 0: the master never has to SIGKILL it. A second signal, or SIGQUIT, stops at once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

import gevent
import gevent.event

from rtbus.config import Config
from rtbus.errors import ConfigError, StartupError
from rtbus.log import log_notes, setup_logging
from rtbus.service import process
from rtbus.service.child import ChildProcess
from rtbus.service.heartbeat import HeartbeatWriter

_logger = logging.getLogger(__name__)

LIMITS_INTERVAL = 2.0    # seconds between two looks at the master and the memory
# Seconds for dropped websockets to finish (unsubscribe, presence) before the pools close.
DROPPED_WAIT = 2.0


class GreenletLoop:
    """The evented loop style: the skeleton's chores as greenlets, the hub never blocked.

    Signal handlers go through gevent (they run as callbacks on the hub, so they may log
    and touch the server); the process's main greenlet waits for the stop event, then
    winds the child down.
    """

    def __init__(self):
        self.stopping = gevent.event.Event()

    def install_signals(self, child: ChildProcess) -> None:
        for signum in child.SIGNALS:
            gevent.signal_handler(signum, child.dispatch_signal, signum)

    def on_stop(self, child: ChildProcess, why: str, fast: bool) -> None:
        _logger.info("%s: stopping %s", why, "fast" if fast else "gracefully")
        self.stopping.set()
        if fast:
            child.drop_in_flight()

    def run(self, child: ChildProcess) -> None:
        if child.heartbeat is not None:
            # On the event loop it vouches for: a loop blocked by busy work stops these
            # beats, and the master (another process) notices.
            gevent.spawn(self._every, child.BEAT, child.heartbeat.beat)
        gevent.spawn(self._every, LIMITS_INTERVAL, lambda: self._check_limits(child), first=LIMITS_INTERVAL)
        if child.snapshots is not None:
            gevent.spawn(self._every, child.snapshots.interval, child.snapshots.write)
        for chore in child.chores():
            gevent.spawn(chore, self.stopping)
        self.stopping.wait()
        child.wind_down()

    def _every(self, interval: float, action, *, first: float = 0.0) -> None:
        if self.stopping.wait(timeout=first):
            return
        while not self.stopping.is_set():
            action()
            self.stopping.wait(timeout=interval)

    def _check_limits(self, child: ChildProcess) -> None:
        reason = child.limit_reached()
        if reason:
            child.stop(reason)


class EventedProcess(ChildProcess):
    """One gevent worker; `run()` blocks until it stops and returns the exit code."""

    kind = "gevent"
    name = "gevent process"
    role = "gevent"          # the Services it builds
    loop_style = GreenletLoop

    def __init__(self, config, heartbeat: HeartbeatWriter | None, master_pid: int | None,
                 listener=None, *, worker: int = 0):
        super().__init__(config, heartbeat, master_pid, listener)
        self.worker = worker            # its number among the gevent workers (metrics label)
        self.stop_hooks: list = []      # callables run first on a graceful stop
        self.services = None    # rtbus.service.services.Services, built at start
        self.app = None
        self.server = None      # the EdgeServer on the listening socket

    @property
    def title(self) -> str:
        return f"rtbus: gevent {self.worker}"

    def setup(self) -> None:
        from rtbus.http.app import Application
        from rtbus.metrics import collect
        from rtbus.service.services import build
        from rtbus.websocket.edge import EdgeLimits
        from rtbus.websocket.pywsgi_edge import EdgeServer

        process.raise_open_files_limit()
        config = self.config
        self.services = build(config, self.role, extra_figures=lambda: collect.edge_figures(self.server),
                              snapshot_extra=self.snapshot_extra())
        self.snapshots = self.services.snapshots
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
        self.announce(*self.listener.getsockname()[:2])

    def snapshot_extra(self):
        """What this process adds to its status snapshot (a callable), or None."""
        return lambda: {"worker": self.worker}

    def announce(self, host: str, port: int) -> None:
        _logger.info("evented service (longpolling) running on %s:%d (gevent worker %d, pid %d)",
                     host, port, self.worker, os.getpid())

    def chores(self) -> list:
        """Greenlets of this kind besides the skeleton's: callables taking the stop event."""
        return []

    def drop_in_flight(self) -> None:
        if self.server is not None:
            self.server.pool.kill(block=False)
        if self.services is not None:
            self.services.hub.drop_all()

    def wind_down(self) -> None:
        server = self.server
        server.close()   # stop accepting; connections in flight go on
        for hook in self.stop_hooks:
            if self.fast:
                break
            try:
                hook()
            except Exception:
                _logger.exception("error in a stop hook")
        timeout = 0 if self.fast else self.config.graceful_timeout
        deadline = time.monotonic() + timeout
        hub = self.services.hub
        # Websockets have no greenlet in the server's pool: the hub waits for its own.
        active = len(server.pool) + len(hub.connections)
        if active:
            _logger.info("waiting up to %.0f s for %d connections", timeout, active)
        server.stop(timeout=timeout)
        if hub.wait_closed(max(deadline - time.monotonic(), 0.0)):
            hub.drop_all()
            hub.wait_closed(DROPPED_WAIT)

    def teardown(self) -> None:
        self.services.close()
        _logger.info("evented process %d stopped", os.getpid())


class SingleProcess(EventedProcess):
    """``--workers 0``: the one process, every route, cron in a greenlet, its own database."""

    title = "rtbus: single"
    name = "single process"
    role = "single"

    def __init__(self, config):
        super().__init__(config, None, None)
        self._database = None
        self._runtime_dir: str | None = None   # claimed at setup, released at teardown
        self._runtime_default = False

    def setup(self) -> None:
        self._bootstrap()
        try:
            super().setup()
        except BaseException:
            self._release()
            raise

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

    def snapshot_extra(self):
        return None

    def announce(self, host: str, port: int) -> None:
        _logger.info("rtbus single process %d serving every route on %s:%d", os.getpid(), host, port)

    def chores(self) -> list:
        return [self._cron_loop]

    def _cron_loop(self, stopping: gevent.event.Event) -> None:
        runner = self.services.cron
        if runner is None:
            return
        while not stopping.is_set():
            stopping.wait(timeout=runner.run_pending())

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self._release()

    def _release(self) -> None:
        if self._runtime_dir is not None:
            from rtbus.service import runtime
            runtime.release(self._runtime_dir, remove_dir=self._runtime_default)
            self._runtime_dir = None
        self._database.close()


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
        server = SingleProcess(config)
    else:
        listener = socket.socket(fileno=fds["listen"])
        listener.setblocking(False)
        server = EventedProcess(config, HeartbeatWriter(fds["heartbeat"]), os.getppid(), listener,
                                worker=worker)
    try:
        return server.run()
    except StartupError as exc:
        _logger.error("%s", exc)
        if config.logfile:   # the operator at the terminal must see it too
            print(f"rtbus-server: error: {exc}", file=sys.stderr, flush=True)
        return process.EXIT_STARTUP
