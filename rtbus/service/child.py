"""The skeleton every child of the master shares: becoming a child after the fork, signals
dispatched to ``handle_<signal>`` methods, and one small loop (limits, heartbeat, snapshot, work).

`become_child` runs in the freshly forked process: it drops what belongs to the master
(signal handlers, the wake-up pipe, the other children's heartbeat pipes, the sockets
this kind does not serve) and runs the kind's loop, or execs the evented process. It
never returns: the exit code of the loop is the process's.

`ChildProcess` is the forked workers' base (HTTP and cron workers): a subclass names
its `title`, extends `SIGNALS` with the signals it handles (each through a
``handle_<name>`` method, called from the signal handler: they only flip flags or
raise), and implements `setup`, `tick` (wait at most BEAT, then do one unit of work)
and `teardown`; `limit_reached` adds the kind's own reasons to exit.
"""

from __future__ import annotations

import logging
import os
import select
import signal

from rtbus.service import process
from rtbus.service.heartbeat import HeartbeatWriter
from rtbus.service.kinds import KINDS

_logger = logging.getLogger(__name__)

MASTER_SIGNALS = (signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT)


class ChildProcess:
    """One forked worker's life; `run()` returns the exit code."""

    title = "rtbus: child"      # in ps
    name = "child"              # in the log
    SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
    BEAT = 1.0     # longest wait of one tick, so the heartbeat keeps coming

    def __init__(self, config, heartbeat: HeartbeatWriter, master_pid: int):
        self.config = config
        self.heartbeat = heartbeat
        self.master_pid = master_pid
        self.alive = True
        self.snapshots = None       # a SnapshotWriter, set by setup() when there is a runtime dir
        self._wake_r, self._wake_w = os.pipe()

    # -- signals ---------------------------------------------------------
    def install_signals(self) -> None:
        process.reset_signal_handlers(*MASTER_SIGNALS)
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _on_signal(self, signum, frame) -> None:
        getattr(self, "handle_" + signal.Signals(signum).name[3:].lower())()

    def handle_term(self) -> None:
        """Graceful: finish the unit of work in progress, then leave the loop."""
        self.alive = False

    def handle_int(self) -> None:
        self.handle_term()

    # -- the loop --------------------------------------------------------
    def limit_reached(self) -> str | None:
        """Why this child must exit now, or None."""
        if os.getppid() != self.master_pid:
            return "the master process is gone"
        return None

    def run(self) -> int:
        process.set_title(self.title)
        self.install_signals()
        self.setup()
        try:
            while self.alive:
                reason = self.limit_reached()
                if reason:
                    _logger.info("%s %d exits: %s", self.name, os.getpid(), reason)
                    break
                self.heartbeat.beat()
                if self.snapshots is not None:
                    self.snapshots.maybe_write()
                self.tick()
        finally:
            if self.snapshots is not None:
                self.snapshots.remove()
            self.teardown()
        return process.EXIT_OK

    def wait_readable(self, fds: list, timeout: float) -> list:
        """Wait up to `timeout` for `fds` (or a signal); return the readable ones among `fds`."""
        if timeout <= 0 or not self.alive:
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

    def setup(self) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


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
        if kind == "gevent":
            master.http_socket.close()
            process.exec_evented("gevent", {"listen": listener.fileno(), "heartbeat": hb_w,
                                            "config": cfg_r}, worker=slot)
        heartbeat = HeartbeatWriter(hb_w)
        if kind == "http":
            from rtbus.service.http_worker import HttpWorker
            master.gevent_socket.close()
            code = HttpWorker(master.config, master.http_socket, heartbeat, master_pid).run()
        else:
            from rtbus.service.cron_worker import CronWorker
            master.http_socket.close()
            master.gevent_socket.close()
            code = CronWorker(master.config, heartbeat, master_pid).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else process.EXIT_WORKER_FATAL
    except BaseException:
        _logger.exception("%s %d crashed", KINDS[kind].title, os.getpid())
        code = 1
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)
