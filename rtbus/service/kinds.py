"""The table of child process kinds the prefork master runs, and what differs between them.

One row per kind: its title in logs, how many the configuration wants, how long its
heartbeat may stay silent (and under which restart reason it is then killed), whether
it replaces its image with a fresh interpreter (gevent must patch before anything is
imported) and whether a stop drains the kind one process at a time (the evented ones:
their clients reconnect to the survivors instead of all at once).
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
    wanted: Callable[[object], int]           # config -> number of processes
    silence_limit: Callable[[object], float]  # config -> seconds without a heartbeat
    silence_reason: str                       # restart reason when killed for silence
    execs: bool = False                       # fork + exec of a fresh interpreter
    drains_one_at_a_time: bool = False        # a stop asks the next only once one is gone


KINDS: dict[str, ProcessKind] = {kind.name: kind for kind in (
    ProcessKind("http", "http worker", lambda c: c.workers, lambda c: c.limit_time_real,
                "heartbeat_timeout"),
    ProcessKind("gevent", "gevent process", gevent_worker_count,
                lambda c: c.gevent_watchdog_timeout, "gevent_watchdog_timeout",
                execs=True, drains_one_at_a_time=True),
    ProcessKind("cron", "cron worker", lambda c: c.max_cron_threads,
                lambda c: c.effective("limit_time_real_cron"), "heartbeat_timeout"),
)}
