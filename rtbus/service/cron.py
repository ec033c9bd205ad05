"""Scheduled jobs, run by the cron workers (or by single mode), once per interval per database.

Each job has a row in ``rtbus_cron`` of every served database. A runner locks
a due row with ``FOR UPDATE SKIP LOCKED`` on one connection and runs the job on
another, so any number of cron workers share the work without running a job
twice, and a crashed worker's lock dies with its connection. ``lastcall`` and
``nextcall`` tell the routes when the bus garbage collector last and next runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

import psycopg2

from rtbus.log import current_dbname

_logger = logging.getLogger(__name__)

MAX_IDLE = 60.0   # seconds between two looks at the schedule when nothing is due


@dataclasses.dataclass(frozen=True)
class Job:
    """A named task run every `interval` seconds: ``run(conn) -> summary for the log``."""

    name: str
    interval: int
    run: Callable[[object], str]


SESSION_GC_INTERVAL = 3600
PRESENCE_GC_INTERVAL = 600


def bus_jobs(config, notifier) -> tuple[Job, ...]:
    """The jobs every rtbus deployment runs; `notifier` NOTIFYs the presences they end."""
    from rtbus.bus.gc import collect_garbage
    from rtbus.bus.presence import gc_presences
    from rtbus.session import gc_sessions

    def bus_gc(conn) -> str:
        deleted = collect_garbage(conn, config.gc_retention_seconds)
        return f"{deleted} notifications older than {config.gc_retention_seconds} s deleted"

    def session_gc(conn) -> str:
        return f"{gc_sessions(conn)} expired sessions deleted"

    def presence_gc(conn) -> str:
        return f"{gc_presences(conn, notifier)} outdated presences removed"

    return (Job("bus_gc", config.gc_interval_seconds, bus_gc),
            Job("session_gc", SESSION_GC_INTERVAL, session_gc),
            Job("presence_gc", PRESENCE_GC_INTERVAL, presence_gc))


class CronRunner:
    """Runs the due jobs of `databases` with connections from `pool` (two at a time)."""

    def __init__(self, pool, databases: list[str], jobs: tuple[Job, ...]):
        self.pool = pool
        self.databases = list(databases)
        self.jobs = {job.name: job for job in jobs}
        self.runs = 0
        self.failures = 0
        self._registered: set[str] = set()

    def run_pending(self) -> float:
        """Run every due job once; return the seconds until the next one is due."""
        wait = MAX_IDLE
        for dbname in self.databases:
            token = current_dbname.set(dbname)
            try:
                wait = min(wait, self._run_database(dbname))
            except (psycopg2.Error, OSError) as exc:
                _logger.warning("cron: cannot run the jobs of %s: %s", dbname, str(exc).strip())
                wait = min(wait, 5.0)
            finally:
                current_dbname.reset(token)
        return max(wait, 0.0)

    def _register(self, conn, dbname: str) -> None:
        with conn.cursor() as cr:
            for job in self.jobs.values():
                cr.execute(
                    "INSERT INTO rtbus_cron (name, interval_seconds) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET interval_seconds = EXCLUDED.interval_seconds",
                    (job.name, job.interval),
                )
        conn.commit()
        self._registered.add(dbname)

    def _run_database(self, dbname: str) -> float:
        with self.pool.connection(dbname) as lock_conn:
            if dbname not in self._registered:
                self._register(lock_conn, dbname)
            while True:
                name = self._lock_due_job(lock_conn)
                if name is None:
                    break
                try:
                    self._run_locked(lock_conn, dbname, name)
                finally:
                    lock_conn.rollback()
            return self._seconds_until_next(lock_conn)

    def _lock_due_job(self, conn) -> str | None:
        with conn.cursor() as cr:
            cr.execute(
                "SELECT name FROM rtbus_cron WHERE name = ANY(%s) "
                "AND nextcall <= (now() AT TIME ZONE 'utc') "
                "ORDER BY nextcall LIMIT 1 FOR UPDATE SKIP LOCKED",
                (list(self.jobs),),
            )
            row = cr.fetchone()
        return row[0] if row else None

    def _run_locked(self, lock_conn, dbname: str, name: str) -> None:
        job = self.jobs[name]
        started = time.monotonic()
        with lock_conn.cursor() as cr:
            cr.execute("UPDATE rtbus_cron SET running_pid = %s WHERE name = %s", (os.getpid(), name))
        try:
            with self.pool.connection(dbname) as job_conn:
                summary = job.run(job_conn)
                job_conn.commit()
        except Exception:
            self.failures += 1
            _logger.exception("cron job %s failed on %s", name, dbname)
            summary = None
        # A failed job is retried at its next interval, not in a tight loop.
        with lock_conn.cursor() as cr:
            cr.execute(
                "UPDATE rtbus_cron SET running_pid = NULL, "
                "lastcall = CASE WHEN %s THEN (now() AT TIME ZONE 'utc') ELSE lastcall END, "
                "nextcall = (now() AT TIME ZONE 'utc') + make_interval(secs => interval_seconds) "
                "WHERE name = %s",
                (summary is not None, name),
            )
        lock_conn.commit()
        self.runs += 1
        if summary is not None:
            _logger.info("cron job %s done on %s in %.2f s: %s", name, dbname,
                         time.monotonic() - started, summary)

    def _seconds_until_next(self, conn) -> float:
        with conn.cursor() as cr:
            cr.execute(
                "SELECT EXTRACT(EPOCH FROM min(nextcall) - (now() AT TIME ZONE 'utc')) "
                "FROM rtbus_cron WHERE name = ANY(%s)",
                (list(self.jobs),),
            )
            (seconds,) = cr.fetchone()
        conn.rollback()
        return MAX_IDLE if seconds is None else float(seconds)
