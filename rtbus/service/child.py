"""The skeleton every rtbus process but the master shares: signals dispatched to
``handle_<signal>`` methods, the limit checks, the heartbeat, the snapshot, and one stop
protocol (the first TERM or INT graceful, a second one fast, QUIT fast), run by a loop
style chosen per class.

One hierarchy::

    ChildProcess                 (this module; the loop style is `SelectLoop` by default)
     ├─ HttpWorker               rtbus.service.http_worker   forked, a request per tick
     ├─ CronWorker               rtbus.service.cron_worker   forked, the due jobs per tick
     └─ EventedProcess           rtbus.service.gevent_process  fork + exec, greenlets (`GreenletLoop`)
         └─ SingleProcess        ``--workers 0``: no master, no heartbeat, cron in-process

A subclass names its `kind` (its row in `rtbus.service.kinds`, whose memory settings
are its limits), its `title` and `name`, extends `SIGNALS` with the signals it handles
(each through a ``handle_<name>`` method), and implements `setup` and `teardown` (called only once setup succeeded); a
`SelectLoop` child also implements `tick` (wait at most BEAT, then do one unit of work),
and any child may implement `wind_down` (the graceful part of a stop, after the loop).
`limit_reached` adds the kind's own reasons to exit.

`become_child` runs in the freshly forked process: it drops what belongs to the master
(signal handlers, the wake-up pipe, the other children's heartbeat pipes, the sockets
this kind does not serve) and runs the kind's class, or execs the evented process. It
never returns: the exit code of `run()` is the process's.
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import signal

from rtbus.service import process
from rtbus.service.heartbeat import HeartbeatWriter
from rtbus.service.kinds import KINDS

_logger = logging.getLogger(__name__)

MASTER_SIGNALS = (signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT)


class SelectLoop:
    """The forked workers' loop style: plain signal handlers and a loop of short ticks.

    Signal handlers run between two bytecodes of whatever the worker is doing, so they
    only flip flags (or raise, for a fast stop); the wake-up fd cuts a tick's wait short.
    """

    def __init__(self):
        self._wake_r, self._wake_w = os.pipe()

    def install_signals(self, child: ChildProcess) -> None:
        process.reset_signal_handlers(*MASTER_SIGNALS)
        for signum in child.SIGNALS:
            signal.signal(signum, lambda signum, frame: child.dispatch_signal(signum))
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def on_stop(self, child: ChildProcess, why: str, fast: bool) -> None:
        # Often in a signal handler: no logging (its lock may be held by the frame we interrupted).
        if fast:
            raise SystemExit(process.EXIT_OK)   # unwinds through teardown

    def run(self, child: ChildProcess) -> None:
        while child.alive:
            reason = child.limit_reached()
            if reason:
                _logger.info("%s %d exits: %s", child.name, os.getpid(), reason)
                child.stop(reason)
                break
            if child.heartbeat is not None:
                child.heartbeat.beat()
            if child.snapshots is not None:
                child.snapshots.maybe_write()
            child.tick()
        child.wind_down()

    def wait_readable(self, child: ChildProcess, fds: list, timeout: float) -> list:
        if timeout <= 0 or not child.alive:
            return []
        try:
            readable, _, _ = select.select([*fds, self._wake_r], [], [], timeout)
        except InterruptedError:
            return []
        if self._wake_r in readable:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        return [fd for fd in readable if fd is not self._wake_r]


class ChildProcess:
    """One process's life under the skeleton; `run()` returns the exit code."""

    kind: str                   # its row in rtbus.service.kinds.KINDS (its limits), set by each subclass
    title = "rtbus: child"      # in ps
    name = "child"              # in the log
    SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    BEAT = 1.0                  # seconds between heartbeats (and longest wait of one tick)
    loop_style = SelectLoop

    def __init__(self, config, heartbeat: HeartbeatWriter | None, master_pid: int | None,
                 listener=None):
        self.config = config
        self.listener = listener        # the listening socket it serves, if any
        self.heartbeat = heartbeat      # None: nobody watches (single mode)
        self.master_pid = master_pid    # None: no master to outlive
        self.alive = True               # False once a stop was asked
        self.fast = False               # the stop drops what is in progress
        self.snapshots = None           # a SnapshotWriter, set by setup() when there is a runtime dir
        self.loop = self.loop_style()

    # -- signals and the stop protocol -----------------------------------
    def dispatch_signal(self, signum: int) -> None:
        getattr(self, "handle_" + signal.Signals(signum).name[3:].lower())()

    def handle_term(self) -> None:
        """Graceful: finish what is in progress, then leave; a second one is fast."""
        self.stop("SIGTERM")

    def handle_int(self) -> None:
        self.stop("SIGINT")

    def handle_quit(self) -> None:
        """Fast: drop what is in progress and leave."""
        self.stop("SIGQUIT", fast=True)

    def stop(self, why: str, *, fast: bool = False) -> None:
        """Ask this process to stop, gracefully unless `fast` or a stop was asked already."""
        if not self.alive and not fast:
            why, fast = f"second {why}", True
        self.alive = False
        self.fast = self.fast or fast
        self.loop.on_stop(self, why, fast)

    # -- limits ----------------------------------------------------------
    def limit_reached(self) -> str | None:
        """Why this process must exit now (master gone, soft memory limit), or None."""
        if self.master_pid is not None and os.getppid() != self.master_pid:
            return "the master process is gone"
        setting = KINDS[self.kind].memory_soft
        soft = self.config.effective(setting) if setting else None
        if soft:
            vms = process.virtual_memory()
            if vms > soft:
                return f"{setting} reached ({vms} > {soft} bytes)"
        return None

    # -- the life --------------------------------------------------------
    def run(self) -> int:
        process.set_title(self.title)
        process.set_memory_hard_limit(self.config.effective(KINDS[self.kind].memory_hard))
        self.loop.install_signals(self)
        self.setup()
        try:
            self.loop.run(self)
        finally:
            self.teardown()
        return process.EXIT_OK

    def wait_readable(self, fds: list, timeout: float) -> list:
        """Wait up to `timeout` for `fds` (or a signal); return the readable ones among `fds`.

        For the `SelectLoop` children's `tick`; an evented child waits on gevent instead.
        """
        return self.loop.wait_readable(self, fds, timeout)

    def setup(self) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        raise NotImplementedError

    def wind_down(self) -> None:
        """The graceful part of a stop, once the loop is left (skipped bits when `fast`)."""

    def teardown(self) -> None:
        """Release what `setup` built (called only when setup succeeded: a failing one cleans up)."""


def become_child(master, kind: str, slot: int, hb_w: int, cfg_r: int, listener) -> None:
    """Run in the forked child of `master`: turn into a `kind` worker; never returns.

    `listener` is the longpolling socket a gevent worker serves (its own, or the
    master's); `cfg_r` the pipe its configuration comes through.
    """
    code = process.EXIT_WORKER_FATAL
    try:
        signal.set_wakeup_fd(-1)
        process.reset_signal_handlers(signal.SIGINT, signal.SIGTERM, *MASTER_SIGNALS)
        master.close_in_child()
        master_pid = os.getppid()
        if KINDS[kind].execs:
            master.http_socket.close()
            process.exec_evented("gevent", {"listen": listener.fileno(), "heartbeat": hb_w,
                                            "config": cfg_r}, worker=slot)
        module, _, name = KINDS[kind].runs.partition(":")
        worker_class = getattr(importlib.import_module(module), name)
        serves = master.http_socket if kind == "http" else None
        for sock in (master.http_socket, master.gevent_socket):
            if sock is not serves:
                sock.close()
        code = worker_class(master.config, HeartbeatWriter(hb_w), master_pid, serves).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else process.EXIT_WORKER_FATAL
    except BaseException:
        _logger.exception("%s %d crashed", KINDS[kind].title, os.getpid())
        code = 1
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)
