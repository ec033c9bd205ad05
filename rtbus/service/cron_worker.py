"""A cron worker: a forked, niced child running the scheduled jobs (bus garbage collection)."""

from __future__ import annotations

import os
import time

from rtbus.service.child import ChildProcess


class CronWorker(ChildProcess):
    """One cron worker process: each tick runs the due jobs or waits. `run()` returns the exit code."""

    kind = "cron"
    title = "rtbus: cron"
    name = "cron worker"

    def setup(self) -> None:
        from rtbus.service.services import build

        os.nice(10)
        self.services = build(self.config, "cron")
        self.runner = self.services.cron
        self.snapshots = self.services.snapshots
        self._next_look = time.monotonic()

    def teardown(self) -> None:
        self.services.close()

    def tick(self) -> None:
        if time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + self.runner.run_pending()
            self.heartbeat.beat()
        self.wait_readable([], min(self._next_look - time.monotonic(), self.BEAT))
