"""A cron worker: a forked, niced child running the scheduled jobs (bus garbage collection)."""

from __future__ import annotations

import os
import time

from rtbus.service import process
from rtbus.service.child import ChildProcess


class CronWorker(ChildProcess):
    """One cron worker process: each tick runs the due jobs or waits. `run()` returns the exit code."""

    title = "rtbus: cron"
    name = "cron worker"

    def setup(self) -> None:
        from rtbus.bus.publish import Notifier, set_default_notifier
        from rtbus.db.budget import pool_size
        from rtbus.db.connect import process_pool, served_databases
        from rtbus.service.cron import CronRunner, bus_jobs

        config = self.config
        os.nice(10)
        process.set_memory_hard_limit(config.limit_memory_hard)
        set_default_notifier(Notifier.from_config(config))
        self.pool = process_pool(config, name="cron", maxconn=pool_size(config, "cron"))
        self.runner = CronRunner(self.pool, served_databases(config), bus_jobs(config))
        self.snapshots = self._snapshot_writer()
        self._next_look = time.monotonic()

    def teardown(self) -> None:
        self.pool.close_all()

    def tick(self) -> None:
        if time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + self.runner.run_pending()
            self.heartbeat.beat()
        self.wait_readable([], min(self._next_look - time.monotonic(), self.BEAT))

    def _snapshot_writer(self):
        from rtbus.metrics import collect
        from rtbus.metrics.snapshots import SnapshotWriter

        if not self.config.runtime_dir:
            return None
        return SnapshotWriter(self.config.runtime_dir, "cron", lambda: collect.worker_figures(self.pool))
