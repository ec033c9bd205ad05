"""Small facts about the current process: exit codes, titles, memory, limits, signals."""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys

_logger = logging.getLogger(__name__)

# Exit codes, shared by the CLI, the master and its children.
EXIT_OK = 0
EXIT_STARTUP = 1        # the server could not start (port in use, database down...)
EXIT_CONFIG = 2         # wrong flag, bad value, unreadable configuration file
EXIT_WORKER_FATAL = 3   # a child met an error that respawning cannot fix: the master stops

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def set_title(title: str) -> None:
    """Show `title` in ps/top (``rtbus: master``, ``rtbus: http worker``...)."""
    try:
        import setproctitle
    except ImportError:   # optional at run time; titles are a convenience
        return
    setproctitle.setproctitle(title)


def virtual_memory() -> int:
    """Virtual memory size of this process in bytes (what Odoo's soft limits measure)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * _PAGE_SIZE


def resident_memory(pid: int | str = "self") -> int:
    """Resident set size of process `pid` in bytes, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def set_memory_hard_limit(limit: int | None) -> None:
    """Make allocations beyond `limit` bytes of address space fail (RLIMIT_AS)."""
    if not limit:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit > hard:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def set_cpu_budget(seconds: int | None) -> None:
    """Allow `seconds` more CPU time from now; beyond it the kernel sends SIGXCPU."""
    if not seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            _logger.warning("could not raise the open files limit from %d to %d", soft, hard)
    return soft


def reset_signal_handlers(*signums: int) -> None:
    """Give `signums` back their default disposition (after fork, the master's stay)."""
    for signum in signums:
        signal.signal(signum, signal.SIG_DFL)


def process_age(pid: int) -> float | None:
    """Seconds since process `pid` started, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as uptime:
            up = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    start_ticks = int(fields[19])
    return up - start_ticks / os.sysconf("SC_CLK_TCK")


def exec_evented(mode: str, fds: dict[str, int], worker: int = 0) -> None:
    """Replace this process by ``python -m rtbus.service.evented MODE``; never returns.

    `fds` ({"config": fd, "listen": fd, ...}) are made inheritable and named to the
    new interpreter in RTBUS_CHILD_FDS; `worker` (its number among the gevent
    workers) in RTBUS_GEVENT_WORKER. The package's own directory goes first on
    PYTHONPATH, so a source checkout runs the same code as the parent.
    """
    import rtbus

    for fd in fds.values():
        os.set_inheritable(fd, True)
    env = dict(os.environ)
    env["RTBUS_CHILD_FDS"] = ",".join(f"{name}={fd}" for name, fd in fds.items())
    env["RTBUS_GEVENT_WORKER"] = str(worker)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(rtbus.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "rtbus.service.evented", mode], env)
