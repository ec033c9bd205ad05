"""The table of child process kinds the prefork master runs, and what differs between them.

One row per kind: its title in logs, what it runs (the `ChildProcess` subclass, or the
evented entry point it execs), how many the configuration wants, its limits (how long
its heartbeat may stay silent and under which restart reason it is then killed; the
settings of its soft and hard memory limits) and how it stops: whether it replaces its
image with a fresh interpreter (gevent must patch before anything is imported) and
whether a stop drains the kind one process at a time (the evented ones: their clients
reconnect to the survivors instead of all at once). Single mode (``--workers 0``) runs
the evented process without a master, under the limits of the ``gevent`` row.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable


def gevent_worker_count(config) -> int:
    """How many gevent processes `config` asks for: ``gevent_workers``, ``auto`` = CPU cores."""
    text = str(config.gevent_workers).strip().lower()
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    return max(1, int(text))


@dataclasses.dataclass(frozen=True)
class ProcessKind:
    """What the master needs to know to run, watch and stop the children of one kind."""

    name: str
    title: str
    runs: str                                 # "module:Class" of its ChildProcess
    wanted: Callable[[object], int]           # config -> number of processes
    silence_limit: Callable[[object], float]  # config -> seconds without a heartbeat
    silence_reason: str                       # restart reason when killed for silence
    memory_soft: str | None                   # setting: recycle past this much memory
    memory_hard: str                          # setting: RLIMIT_AS
    execs: bool = False                       # fork + exec of a fresh interpreter
    drains_one_at_a_time: bool = False        # a stop asks the next only once one is gone


KINDS: dict[str, ProcessKind] = {kind.name: kind for kind in (
    ProcessKind("http", "http worker", "rtbus.service.http_worker:HttpWorker",
                lambda c: c.workers, lambda c: c.limit_time_real, "heartbeat_timeout",
                "limit_memory_soft", "limit_memory_hard"),
    ProcessKind("gevent", "gevent process", "rtbus.service.gevent_process:EventedProcess",
                gevent_worker_count, lambda c: c.gevent_watchdog_timeout, "gevent_watchdog_timeout",
                "limit_memory_soft_gevent", "limit_memory_hard_gevent",
                execs=True, drains_one_at_a_time=True),
    ProcessKind("cron", "cron worker", "rtbus.service.cron_worker:CronWorker",
                lambda c: c.max_cron_threads, lambda c: c.effective("limit_time_real_cron"),
                "heartbeat_timeout", None, "limit_memory_hard"),
)}
