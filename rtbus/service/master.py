"""The prefork master: spawns, supervises, recycles and respawns the children.

Children (see `rtbus.service.kinds`): ``workers`` HTTP workers (forked, sharing
the HTTP socket), ``gevent_workers`` gevent processes on the longpolling port
(fork + exec of a fresh interpreter, so gevent patches before anything is
imported) and ``max_cron_threads`` cron workers (forked).

With one gevent worker it inherits the master's listening socket, as in Odoo.
With more, and a kernel that has SO_REUSEPORT, the master only binds the port
(without listening) and gives each gevent worker a listening socket of its own
on it, so the kernel spreads connections and a worker that stops takes its socket
away: new clients go to the others. Without SO_REUSEPORT they share one socket.

Signal handlers only queue the signal and wake the loop. The loop, in the
style of gunicorn's arbiter, is a short named sequence:

- handle the queued signals, one by one;
- reap: collect the children that exited, decide whether to respawn them;
- murder: SIGKILL the children whose heartbeat stopped for longer than their
  kind allows or that overran graceful_timeout after being asked to stop, and
  every child once a stop overran its deadline;
- manage: let the next queued evented child drain, retire surplus HTTP
  workers, spawn the missing children (not while stopping);
- write the status snapshot and sleep on the wake-up pipe and the heartbeats.

The signals:

- INT, TERM: graceful stop (children finish what they do, websockets get 1001;
  gevent workers one after the other); a second one stops fast (SIGKILL).
  QUIT: fast stop.
- HUP: re-read the configuration and replace every child, keeping the sockets
  (the old gevent workers drain one at a time once their successors run).
- TTIN / TTOU: one HTTP worker more / less.
- CHLD: wake up and reap.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import select
import signal
import time
from typing import Callable

from rtbus.errors import ConfigError, StartupError
from rtbus.log import setup_logging
from rtbus.service import process
from rtbus.service.child import become_child
from rtbus.service.drain import DrainQueue
from rtbus.service.heartbeat import HeartbeatReader
from rtbus.service.kinds import KINDS, gevent_worker_count
from rtbus.service.sockets import bind_listener, describe, reuseport_available

_logger = logging.getLogger(__name__)

BEAT = 1.0                  # longest sleep of the loop
MAX_QUEUED_SIGNALS = 5      # beyond this, signals other than CHLD are dropped
BOOT_BACKOFF_FIRST = 0.5    # delay before respawning a child that died at boot...
BOOT_BACKOFF_MAX = 30.0     # ...doubling up to this
FAST_STOP_GRACE = 5.0       # seconds to reap children after SIGKILL

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


@dataclasses.dataclass
class Child:
    """One supervised child process."""

    kind: str
    pid: int
    heartbeat: HeartbeatReader
    spawned_at: float
    generation: int
    slot: int = 0                         # its number among the live children of its kind
    stop_requested: float | None = None   # when the master asked it to stop
    killed_because: str | None = None     # why the master SIGKILLed it

    @property
    def title(self) -> str:
        return KINDS[self.kind].title


class Master:
    """Supervises the children of one rtbus deployment. `run()` returns the exit code."""

    def __init__(self, config, *, reload_config: Callable[[], object] | None = None):
        self.config = config
        self.reload_config = reload_config
        self.population = config.workers
        self.children: dict[int, Child] = {}
        self.generation = 0
        self.restarts: collections.Counter = collections.Counter()   # by reason, for metrics
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_deadline: float | None = None
        self._exit_code = process.EXIT_OK
        self._boot_failures: collections.Counter = collections.Counter()
        self._respawn_after: dict[str, float] = {}
        self.http_socket = None
        self.gevent_socket = None     # listening, or only bound when each worker has its own
        self.gevent_reuseport = False
        self._drain = DrainQueue()
        self.runtime_dir: str | None = None
        self._runtime_default = not config.runtime_dir
        self._snapshots = None

    # -- start and stop --------------------------------------------------
    def bind(self) -> None:
        """Bind both listening sockets; raises StartupError."""
        config = self.config
        if config.http_port and config.http_port == config.gevent_port:
            raise ConfigError(f"http_port and gevent_port are both {config.http_port}: "
                              f"the longpolling port must differ from the HTTP port")
        self.http_socket = bind_listener(config.http_interface, config.http_port, purpose="HTTP",
                                         backlog=max(64, 8 * self.population))
        # Fixed for the master's life: a socket bound without SO_REUSEPORT cannot share
        # its port with sockets that have it, so a HUP cannot switch between the two.
        self.gevent_reuseport = gevent_worker_count(config) > 1 and reuseport_available()
        try:
            self.gevent_socket = self._bind_gevent(config.gevent_port)
        except StartupError:
            self.http_socket.close()
            raise

    def _bind_gevent(self, port: int, *, own: bool = False):
        """The master's longpolling socket, or (`own`) the listening socket of one worker."""
        return bind_listener(self.config.http_interface, port, purpose="longpolling (gevent)",
                             reuseport=self.gevent_reuseport, listen=own or not self.gevent_reuseport)

    def run(self) -> int:
        if self.http_socket is None:
            self.bind()
        process.set_title("rtbus: master")
        self._claim_runtime_dir()
        self._preload()
        self._install_signals()
        self._write_pidfile()
        gevent_workers = gevent_worker_count(self.config)
        _logger.info("rtbus %s master %d: HTTP on %s with %d workers, longpolling on %s "
                     "with %d gevent workers%s, %d cron workers",
                     _version(), os.getpid(), describe(self.http_socket), self.population,
                     describe(self.gevent_socket), gevent_workers,
                     " (SO_REUSEPORT)" if self.gevent_reuseport else "", self.config.max_cron_threads)
        try:
            while True:
                self._handle_signals()
                self._reap()
                if self.stopping and not self.children:
                    break
                self._murder()
                self._manage()
                self._write_snapshot()
                self._sleep()
        finally:
            self._cleanup()
        _logger.info("master %d stopped", os.getpid())
        return self._exit_code

    @property
    def stopping(self) -> bool:
        return self._stop_deadline is not None

    def _murder(self) -> None:
        """SIGKILL the unresponsive children, and all of them once a stop overran its deadline."""
        self._kill_unresponsive()
        if self.stopping and time.monotonic() > self._stop_deadline:
            self._kill_all("the graceful stop took longer than graceful_timeout")
            self._stop_deadline = time.monotonic() + FAST_STOP_GRACE

    def _manage(self) -> None:
        """Move the population toward the wanted one: the next drain; unless stopping,
        surplus HTTP workers retired and missing children spawned."""
        self._drain_next()
        if not self.stopping:
            self._retire_surplus()
            self._spawn_missing()

    def _preload(self) -> None:
        # Import what the forked workers need once, here, so each fork starts warm.
        import rtbus.http.app  # noqa: F401
        import rtbus.db.pool  # noqa: F401
        import rtbus.service.cron  # noqa: F401

    def _claim_runtime_dir(self) -> None:
        """Settle the runtime directory once; the children get it in their configuration."""
        from rtbus.metrics import collect
        from rtbus.metrics.snapshots import SnapshotWriter
        from rtbus.service import runtime

        self.runtime_dir = runtime.claim(self.config, self.http_socket.getsockname()[1])
        self.config = self.config.replace(runtime_dir=self.runtime_dir)
        self._snapshots = SnapshotWriter(
            self.runtime_dir, "master",
            lambda: collect.merge(collect.process_figures(), collect.master_figures(self)),
            extra=self._status_extra)

    def _status_extra(self) -> dict:
        """What ``rtbus-server status`` shows besides the figures."""
        return {"children": self.status(), "generation": self.generation,
                "http": describe(self.http_socket) if self.http_socket else None,
                "longpolling": describe(self.gevent_socket) if self.gevent_socket else None,
                "workers_wanted": self.population, "stopping": self.stopping}

    def _write_snapshot(self) -> None:
        from rtbus.metrics import snapshots

        if self._snapshots is None or not self._snapshots.due():
            return
        # Children that are gone leave no snapshot (nor series) behind.
        snapshots.prune(self.runtime_dir, keep={os.getpid(), *self.children})
        self._snapshots.write()

    def _write_pidfile(self) -> None:
        if self.config.pidfile:
            with open(self.config.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")

    def _cleanup(self) -> None:
        for sock in (self.http_socket, self.gevent_socket):
            if sock is not None:
                sock.close()
        for child in self.children.values():
            child.heartbeat.close()
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if self.config.pidfile:
            try:
                os.unlink(self.config.pidfile)
            except FileNotFoundError:
                pass
        if self.runtime_dir is not None:
            from rtbus.service import runtime
            runtime.release(self.runtime_dir, remove_dir=self._runtime_default)

    # -- signals ---------------------------------------------------------
    def _install_signals(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # Only queue and wake the loop: no logging, no I/O beyond one byte.
        if len(self._signals) < MAX_QUEUED_SIGNALS or signum == signal.SIGCHLD:
            self._signals.append(signum)
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGINT, signal.SIGTERM):
                if not self.stopping:
                    self.stop(graceful=True, why=signal.Signals(signum).name)
                else:
                    self.stop(graceful=False, why=f"second {signal.Signals(signum).name}")
            elif signum == signal.SIGQUIT:
                self.stop(graceful=False, why="SIGQUIT")
            elif signum == signal.SIGHUP and not self.stopping:
                self.reload()
            elif signum == signal.SIGTTIN and not self.stopping:
                self.population += 1
                _logger.info("SIGTTIN: %d HTTP workers wanted", self.population)
            elif signum == signal.SIGTTOU and not self.stopping:
                if self.population > 1:
                    self.population -= 1
                _logger.info("SIGTTOU: %d HTTP workers wanted", self.population)

    def stop(self, *, graceful: bool, why: str) -> None:
        """Stop every child; graceful gives them graceful_timeout to finish."""
        for sock in (self.http_socket, self.gevent_socket):
            if sock is not None:
                sock.close()
        if graceful:
            drained = sum(1 for c in self.children.values() if KINDS[c.kind].drains_one_at_a_time)
            budget = self.config.graceful_timeout * max(1, drained)
            _logger.info("%s: stopping gracefully (%d children, up to %.0f s)",
                         why, len(self.children), budget)
            self._stop_children(list(self.children.values()))
            self._stop_deadline = time.monotonic() + budget
        else:
            _logger.info("%s: stopping fast", why)
            self._kill_all(why)
            self._stop_deadline = time.monotonic() + FAST_STOP_GRACE

    def reload(self) -> None:
        """Apply a re-read configuration by replacing every child; sockets stay open."""
        if self.reload_config is None:
            _logger.warning("SIGHUP: this master cannot re-read its configuration")
            return
        try:
            new = self.reload_config()
        except (ConfigError, StartupError) as exc:
            _logger.error("SIGHUP: configuration refused, keeping the running one: %s", exc)
            return
        if self.runtime_dir is not None:
            # Snapshots stay where the status command and the children look for them.
            new = new.replace(runtime_dir=self.runtime_dir)
        if new.workers < 1:
            _logger.error("SIGHUP: workers = %d cannot be applied to a running master "
                          "(restart it instead); keeping the running configuration", new.workers)
            return
        try:
            self._rebind(new)
        except StartupError as exc:
            _logger.error("SIGHUP: %s; keeping the running configuration", exc)
            return
        self.config = new
        setup_logging(new.log_level, new.logfile)
        self.population = new.workers
        self.generation += 1
        _logger.info("SIGHUP: configuration re-read; replacing %d children (generation %d)",
                     len(self.children), self.generation)
        old = list(self.children.values())
        self._spawn_missing()
        self._stop_children(old)

    def _rebind(self, new) -> None:
        old = self.config
        if (new.http_interface, new.http_port) != (old.http_interface, old.http_port):
            sock = bind_listener(new.http_interface, new.http_port, purpose="HTTP",
                                 backlog=max(64, 8 * new.workers))
            self.http_socket.close()
            self.http_socket = sock
        if (new.http_interface, new.gevent_port) != (old.http_interface, old.gevent_port):
            sock = bind_listener(new.http_interface, new.gevent_port, purpose="longpolling (gevent)",
                                 reuseport=self.gevent_reuseport, listen=not self.gevent_reuseport)
            self.gevent_socket.close()
            self.gevent_socket = sock
        if gevent_worker_count(new) > 1 and not self.gevent_reuseport and reuseport_available():
            _logger.warning("SIGHUP: the %d gevent workers share one socket until a restart "
                            "gives each its own (SO_REUSEPORT)", gevent_worker_count(new))

    # -- children --------------------------------------------------------
    def _live(self, kind: str) -> list[Child]:
        """Children of `kind` in the current generation that were not asked to stop."""
        return sorted((c for c in self.children.values()
                       if c.kind == kind and c.generation == self.generation and c.stop_requested is None),
                      key=lambda c: c.spawned_at)

    def _spawn_missing(self) -> None:
        now = time.monotonic()
        for kind in KINDS.values():
            if now < self._respawn_after.get(kind.name, 0.0):
                continue
            count = self.population if kind.name == "http" else kind.wanted(self.config)
            taken = {child.slot for child in self._live(kind.name)}
            for slot in [n for n in range(count) if n not in taken][:count - len(taken)]:
                try:
                    self._spawn(kind.name, slot)
                except StartupError as exc:
                    _logger.error("cannot start %s %d: %s", kind.title, slot, exc)
                    self._respawn_after[kind.name] = now + BOOT_BACKOFF_MAX
                    break

    def _retire_surplus(self) -> None:
        http = self._live("http")
        for child in http[self.population:][::-1]:
            _logger.info("retiring %s %d (%d wanted)", child.title, child.pid, self.population)
            self._ask_to_stop(child)

    def _spawn(self, kind: str, slot: int = 0) -> None:
        execs = KINDS[kind].execs
        own_listener = None
        if kind == "gevent" and self.gevent_reuseport:
            own_listener = self._bind_gevent(self.gevent_socket.getsockname()[1], own=True)
        hb_r, hb_w = os.pipe()
        payload = self.config.to_json() if execs else None
        cfg_r = cfg_w = -1
        if payload is not None:
            cfg_r, cfg_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(hb_r)
            if cfg_w >= 0:
                os.close(cfg_w)
            become_child(self, kind, slot, hb_w, cfg_r, own_listener or self.gevent_socket)
        os.close(hb_w)
        if own_listener is not None:
            own_listener.close()     # the worker's now: it leaves with it
        if payload is not None:
            os.close(cfg_r)
            _write_all(cfg_w, payload)
            os.close(cfg_w)
        now = time.monotonic()
        self.children[pid] = Child(kind, pid, HeartbeatReader(hb_r, now), now, self.generation, slot)
        _logger.debug("spawned %s %d (slot %d)", KINDS[kind].title, pid, slot)

    def close_in_child(self) -> None:
        """In a freshly forked child: close what only the master uses."""
        os.close(self._wake_r)
        os.close(self._wake_w)
        for child in self.children.values():
            child.heartbeat.close()

    def _stop_children(self, children: list[Child]) -> None:
        """Ask `children` to stop: at once, or (the evented kinds) queued to leave one by one."""
        for child in sorted(children, key=lambda c: c.spawned_at):
            if KINDS[child.kind].drains_one_at_a_time:
                self._drain.add(child.pid)
            else:
                self._ask_to_stop(child)
        self._drain_next()

    def _drain_next(self) -> None:
        """Ask the next queued child to stop once the previous one is gone (`DrainQueue`)."""
        child = self._drain.next_due(self.children)
        if child is not None:
            _logger.info("draining %s %d (%d more queued)", child.title, child.pid, len(self._drain))
            self._ask_to_stop(child)

    def _ask_to_stop(self, child: Child) -> None:
        if child.stop_requested is None:
            child.stop_requested = time.monotonic()
            _signal(child.pid, signal.SIGTERM)

    def _kill(self, child: Child, reason: str, counted_as: str | None = None) -> None:
        """SIGKILL `child`; `counted_as` is its key in `restarts` (None: a stop, not a restart)."""
        if child.killed_because is None:
            child.killed_because = reason
            if counted_as is not None:
                self.restarts[counted_as] += 1
            _signal(child.pid, signal.SIGKILL)

    def _kill_all(self, reason: str) -> None:
        for child in list(self.children.values()):
            self._kill(child, reason)

    def _kill_unresponsive(self) -> None:
        """SIGKILL the children silent past their kind's limit or slow to stop when asked."""
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.killed_because is not None:
                continue
            if child.stop_requested is not None:
                if now - child.stop_requested > self.config.graceful_timeout:
                    _logger.warning("%s %d did not stop within graceful_timeout (%.0f s): killed",
                                    child.title, child.pid, self.config.graceful_timeout)
                    self._kill(child, "graceful_timeout exceeded", "graceful_timeout")
                continue
            verdict = self._silence_verdict(child, now)
            if verdict is not None:
                key, reason = verdict
                _logger.error("%s %d killed: %s", child.title, child.pid, reason)
                self._kill(child, reason, key)

    def _silence_verdict(self, child: Child, now: float) -> tuple[str, str] | None:
        """(restart reason, sentence for the log) when `child` has been silent too long, else None."""
        limit = KINDS[child.kind].silence_limit(self.config)
        state = child.heartbeat.state
        silent = now - state.last_seen
        if not limit or limit <= 0 or silent <= limit:
            return None
        if child.kind == "http" and state.request:
            return "limit_time_real", (f"limit_time_real ({limit:g} s) exceeded: serving {state.request} "
                                       f"for {now - (state.request_started or now):.1f} s")
        if child.kind == "gevent":
            return "gevent_watchdog_timeout", (f"gevent_watchdog_timeout ({limit:g} s) exceeded: "
                                               f"event loop blocked for {silent:.1f} s")
        return KINDS[child.kind].silence_reason, f"no heartbeat for {silent:.1f} s (limit {limit:g} s)"

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            child.heartbeat.read()
            child.heartbeat.close()
            self._on_exit(child, status)

    def _on_exit(self, child: Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        expected = child.stop_requested is not None or child.killed_because is not None
        if expected or self.stopping:
            _logger.info("%s %d stopped (%s)", child.title, child.pid, how)
            return
        if code == process.EXIT_WORKER_FATAL:
            _logger.critical("%s %d met an unrecoverable error (%s): stopping rtbus", child.title, child.pid, how)
            self._exit_code = process.EXIT_WORKER_FATAL
            self.stop(graceful=True, why="fatal child error")
            return
        if not child.heartbeat.state.ready:
            self._boot_failures[child.kind] += 1
            delay = min(BOOT_BACKOFF_FIRST * 2 ** (self._boot_failures[child.kind] - 1), BOOT_BACKOFF_MAX)
            self._respawn_after[child.kind] = time.monotonic() + delay
            self.restarts["boot_failure"] += 1
            _logger.error("%s %d died during boot (%s); respawning in %.1f s",
                          child.title, child.pid, how, delay)
            return
        self._boot_failures[child.kind] = 0
        self._respawn_after.pop(child.kind, None)
        if code == 0:
            self.restarts["recycled"] += 1
            _logger.info("%s %d exited (%s); respawning", child.title, child.pid, how)
        else:
            self.restarts["died"] += 1
            _logger.warning("%s %d died (%s); respawning", child.title, child.pid, how)

    def _sleep(self) -> None:
        readers = {c.heartbeat.fd: c for c in self.children.values() if not c.heartbeat.eof}
        timeout = BEAT
        now = time.monotonic()
        for when in self._respawn_after.values():
            if when > now:
                timeout = min(timeout, when - now)
        try:
            readable, _, _ = select.select([self._wake_r, *readers], [], [], max(timeout, 0.01))
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                readers[fd].heartbeat.read()

    def status(self) -> list[dict]:
        """One entry per child: kind, pid, age, requests served, resident memory, current request."""
        now = time.monotonic()
        return [
            {"kind": c.kind, "pid": c.pid, "age": round(now - c.spawned_at, 1),
             "requests": c.heartbeat.state.requests, "request": c.heartbeat.state.request,
             "rss": process.resident_memory(c.pid), "generation": c.generation, "slot": c.slot}
            for c in sorted(self.children.values(), key=lambda c: (c.kind, c.spawned_at))
        ]


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("rtbus")
    except Exception:
        return "dev"
