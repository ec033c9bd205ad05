"""Measurements around the drill: the server's memory and CPU (from /proc), this
process's CPU (getrusage), PostgreSQL statement counts (pg_stat_statements) and
new PoolError lines in the server's log. All read-only.
"""

from __future__ import annotations

import os
import resource
import time

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GEVENT_TITLE = "rtbus: gevent"
MASTER_TITLE = "rtbus: master"
# A master's title → the title of the children that do the serving.
SERVING_CHILDREN = {MASTER_TITLE: GEVENT_TITLE, "nginx: master process": "nginx: worker process"}


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(entry))
    return sorted(found)


def resolve_server_pids(pid: int) -> tuple[list[int], str]:
    """The processes to measure for `pid`: its serving children when `pid` is a master
    (an rtbus master's ``rtbus: gevent`` workers, an nginx master's workers), else `pid`
    itself. Returns (pids, title of the first); raises OSError if gone."""
    title = _cmdline(pid)
    wanted = next((child for master, child in SERVING_CHILDREN.items()
                   if title.startswith(master)), None)
    if wanted is None:
        return [pid], title
    found = []
    for child in _children(pid):
        try:
            child_title = _cmdline(child)
        except OSError:
            continue
        if child_title.startswith(wanted):
            found.append((child, child_title))
    if not found:
        raise ProcessLookupError(f"pid {pid} is a master ({title[:40]!r}) without a "
                                 f"'{wanted}' child")
    return [child for child, _ in found], found[0][1]


def _read_usage(pid: int) -> tuple[int, float] | None:
    """(resident KB, CPU seconds) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    rss_kb = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss_kb = int(line.split()[1])
    # utime and stime are fields 14 and 15 of stat; 12 and 13 after the ")".
    return rss_kb, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class ServerProbe:
    """Memory (RSS) and CPU time of the server's evented processes, summed; with
    `backends` (a PostgresBackends), the CPU time of their PostgreSQL backends too."""

    def __init__(self, pid: int):
        self.pids, self.title = resolve_server_pids(pid)
        self.pid = self.pids[0]
        self.backends: PostgresBackends | None = None

    def watch_backends(self, dsn: str) -> None:
        """Measure the backends of the server's processes in the cluster `dsn` reaches;
        raises psycopg2 errors when it cannot connect."""
        self.backends = PostgresBackends(dsn, self.pids)

    def sample(self) -> dict | None:
        """{"rss_kb", "cpu_s", "at", "processes", "postgres"}, or None when every process
        is gone; "postgres" is the backends' sample (None without backends)."""
        usages = [usage for usage in map(_read_usage, self.pids) if usage is not None]
        if not usages:
            return None
        return {"rss_kb": sum(rss for rss, _ in usages), "cpu_s": sum(cpu for _, cpu in usages),
                "at": time.monotonic(), "processes": len(usages),
                "postgres": self.backends.sample() if self.backends else None}

    def close(self) -> None:
        if self.backends is not None:
            self.backends.close()


def own_cpu() -> dict:
    """This process's CPU seconds so far, and the wall clock."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "at": time.monotonic(),
            "max_rss_kb": usage.ru_maxrss}


def cpu_percent(before: dict | None, after: dict | None) -> float | None:
    """CPU use between two samples in % of one core."""
    if not before or not after or after["at"] <= before["at"]:
        return None
    return round(100.0 * (after["cpu_s"] - before["cpu_s"]) / (after["at"] - before["at"]), 1)


def raise_nofile_limit() -> int:
    """Raise this process's soft open-files limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


_PUBLISH_MARKERS = ("rtbus_sendone", "insert into bus_bus", "pg_notify", "pg_stat_statements")
_TRANSACTION_WORDS = ("begin", "commit", "rollback")


class StatementCounter:
    """pg_stat_statements deltas between two snapshots, split into the bench's own
    publishing statements, transaction control, and everything else (the server's).

    pg_stat_statements must be in shared_preload_libraries; otherwise the
    constructor raises a psycopg2 error naming the problem."""

    def __init__(self, dsn: str):
        import psycopg2
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
            if not cur.fetchone()[0]:
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cur.execute("SELECT count(*) FROM pg_stat_statements")   # fails if not preloaded

    def snapshot(self) -> dict:
        with self.conn.cursor() as cur:
            cur.execute("SELECT dbid, queryid, calls, query FROM pg_stat_statements")
            return {(dbid, queryid): (calls, query) for dbid, queryid, calls, query in cur}

    @staticmethod
    def delta(before: dict, after: dict, notifications: int) -> dict:
        """Statements per notification: total, the publisher's, the server's, top 5."""
        rows = []
        for key, (calls, query) in after.items():
            done = calls - before.get(key, (0, ""))[0]
            if done > 0:
                rows.append((done, " ".join(query.split())))
        rows.sort(reverse=True)
        kinds = {"publisher": 0, "transaction": 0, "server": 0}
        for n, query in rows:
            kinds[_statement_kind(query)] += n
        total = sum(kinds.values())
        per = (lambda n: round(n / notifications, 2)) if notifications else (lambda n: None)
        return {"notifications": notifications, "total": total,
                "per_notification_total": per(total),
                "per_notification_server": per(kinds["server"]),
                "per_notification_publisher": per(kinds["publisher"]),
                "per_notification_transaction": per(kinds["transaction"]),
                "top": [{"calls": n, "query": q[:100]} for n, q in rows[:5]]}

    def close(self) -> None:
        self.conn.close()


def _statement_kind(query: str) -> str:
    """"publisher" (the bench's own publishing and probing), "transaction" (BEGIN,
    COMMIT: not attributable, any client sends them) or "server"."""
    lowered = query.lower().strip()
    if any(marker in lowered for marker in _PUBLISH_MARKERS):
        return "publisher"
    if lowered in _TRANSACTION_WORDS:
        return "transaction"
    return "server"


class LogWatch:
    """Counts lines containing `pattern` written to a log file since the last call."""

    def __init__(self, path: str, pattern: str = "PoolError"):
        self.path = path
        self.pattern = pattern
        self.offset = self._size()

    def _size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def count_new(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                text = f.read()
        except OSError:
            return 0
        self.offset += len(text)
        needle = self.pattern.encode()
        return sum(1 for line in text.splitlines() if needle in line)


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets `pid` holds open (empty when it is gone or not ours to read)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _local_ports(pids: list[int]) -> set[int]:
    """The local TCP ports of the sockets held by `pids` (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


class PostgresBackends:
    """CPU time of the PostgreSQL backends serving the server's processes.

    A backend is the server's when its client port (pg_stat_activity) is a local port of
    one of `pids`' TCP sockets. The backends' /proc entries must be readable here: when
    none of the cluster's backends is (the database runs on another machine), `remote`
    is true and the backends are excluded from the server's CPU.
    """

    def __init__(self, dsn: str, pids: list[int]):
        import psycopg2
        self.pids = pids
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.remote = False

    def sample(self) -> dict:
        """{"cpu_s": {backend pid: CPU seconds}}; what a stage subtracts."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pid, client_port FROM pg_stat_activity"
                        " WHERE pid <> pg_backend_pid() AND client_port IS NOT NULL")
            rows = cur.fetchall()
        ports = _local_ports(self.pids)
        cpu = {}
        visible = 0
        for pid, port in rows:
            usage = _read_usage(pid)
            visible += usage is not None
            if usage is not None and port in ports:
                cpu[pid] = usage[1]
        self.remote = bool(rows) and not visible
        return {"cpu_s": cpu}

    @staticmethod
    def delta(before: dict, after: dict) -> tuple[float, int]:
        """(CPU seconds spent between the samples, backends seen): a backend opened during
        the stage counts from 0; one closed during it is missed."""
        spent = sum(cpu - before["cpu_s"].get(pid, 0.0) for pid, cpu in after["cpu_s"].items())
        return spent, len(set(before["cpu_s"]) | set(after["cpu_s"]))

    def close(self) -> None:
        self.conn.close()
