"""A cron worker: a forked, niced child running the scheduled jobs (bus garbage collection)."""

from __future__ import annotations

import logging
import os
import select
import signal
import time

from rtbus.service import process
from rtbus.service.heartbeat import HeartbeatWriter

_logger = logging.getLogger(__name__)

BEAT = 1.0


class CronWorker:
    """The loop of one cron worker process. `run()` returns the exit code."""

    def __init__(self, config, heartbeat: HeartbeatWriter, master_pid: int):
        self.config = config
        self.heartbeat = heartbeat
        self.master_pid = master_pid
        self.alive = True
        self._wake_r, self._wake_w = os.pipe()

    def _on_stop(self, signum, frame):
        self.alive = False

    def run(self) -> int:
        from rtbus.bus.publish import Notifier, set_default_notifier
        from rtbus.db.budget import pool_size
        from rtbus.db.connect import process_pool, served_databases
        from rtbus.service.cron import CronRunner, bus_jobs

        config = self.config
        process.set_title("rtbus: cron")
        process.reset_signal_handlers(signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU,
                                      signal.SIGQUIT)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        os.nice(10)
        process.set_memory_hard_limit(config.limit_memory_hard)
        set_default_notifier(Notifier.from_config(config))
        pool = process_pool(config, name="cron", maxconn=pool_size(config, "cron"))
        runner = CronRunner(pool, served_databases(config), bus_jobs(config))
        snapshots = self._snapshot_writer(pool)
        next_look = time.monotonic()
        try:
            while self.alive:
                if os.getppid() != self.master_pid:
                    _logger.info("cron worker %d exits: the master process is gone", os.getpid())
                    break
                self.heartbeat.beat()
                if snapshots is not None:
                    snapshots.maybe_write()
                if time.monotonic() >= next_look:
                    next_look = time.monotonic() + runner.run_pending()
                    self.heartbeat.beat()
                self._sleep(min(next_look - time.monotonic(), BEAT))
        finally:
            if snapshots is not None:
                snapshots.remove()
            pool.close_all()
        return process.EXIT_OK

    def _snapshot_writer(self, pool):
        from rtbus.metrics import collect
        from rtbus.metrics.snapshots import SnapshotWriter

        if not self.config.runtime_dir:
            return None
        return SnapshotWriter(self.config.runtime_dir, "cron", lambda: collect.worker_figures(pool))

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0 or not self.alive:
            return
        try:
            readable, _, _ = select.select([self._wake_r], [], [], seconds)
        except InterruptedError:
            return
        if readable:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
