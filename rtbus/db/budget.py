"""The connection budget of a whole rtbus deployment, against what PostgreSQL allows.

Every process kind holds its own pool or connections; their sum is what rtbus may
open at worst, and PostgreSQL refuses connections beyond `max_connections` minus the
reserved slots. Exhausting the server shows up as errors in unrelated places, so the
sum is checked at start-up and printed by `rtbus-server budget`:

    kind                     count x each = total
    HTTP workers             workers x min(db_maxconn, 2)    (workers > 0)
    single process           1 x db_maxconn_gevent (effective) (workers = 0)
    gevent workers           gevent_workers x db_maxconn_gevent (effective) (workers > 0)
    cron workers             max_cron_threads x 2
    LISTEN (ImDispatch)      one per evented process x |{imbus_db_name} U served databases|
    NOTIFY (after commit)    one per publishing process
    master                   0 (one transient connection at start-up, released)

`compute_budget()` is pure; `read_server_info()` and `check_budget()` ask the server.
"""

from __future__ import annotations

import dataclasses

from rtbus.db.connect import served_databases
from rtbus.service.kinds import gevent_worker_count

CRON_CONNECTIONS_EACH = 2    # one holds the job's lock, the other runs the job
# An HTTP worker serves one request at a time and a request uses one connection:
# a second slot keeps an idle connection to another served database. Odoo sizes
# these pools at db_maxconn (64) each, which is what makes its budgets explode.
HTTP_WORKER_CONNECTIONS = 2


def pool_size(config, kind: str) -> int:
    """Size of the connection pool of one process of `kind` ("http", "gevent", "single", "cron")."""
    if kind == "http":
        return min(config.db_maxconn, HTTP_WORKER_CONNECTIONS)
    if kind in ("gevent", "single"):
        return config.effective("db_maxconn_gevent")
    if kind == "cron":
        return CRON_CONNECTIONS_EACH
    raise ValueError(f"unknown process kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What the PostgreSQL server allows and how much of it is taken."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int = 0     # PostgreSQL 16+
    in_use: int = 0                   # client connections open now, the checker's excluded
    server_version: int = 0           # server_version_num


@dataclasses.dataclass(frozen=True)
class BudgetRow:
    kind: str
    count: int
    each: int
    note: str = ""

    @property
    def total(self) -> int:
        return self.count * self.each


@dataclasses.dataclass(frozen=True)
class Budget:
    rows: tuple[BudgetRow, ...]
    server: ServerInfo

    @property
    def total(self) -> int:
        """The most connections rtbus could hold at once."""
        return sum(row.total for row in self.rows)

    @property
    def available(self) -> int:
        """Connection slots left for rtbus: max_connections minus reserved and in use."""
        s = self.server
        return s.max_connections - s.superuser_reserved_connections - s.reserved_connections - s.in_use

    @property
    def verdict(self) -> str:
        """"ok" when rtbus fits in the available slots, else "over"."""
        return "ok" if self.total <= self.available else "over"

    def sentence(self) -> str:
        """The verdict as one sentence an operator can act on."""
        if self.verdict == "ok":
            return (f"ok: rtbus may open up to {self.total} connections and PostgreSQL has "
                    f"{self.available} available ({self.available - self.total} to spare).")
        return (f"over budget: rtbus may open up to {self.total} connections but PostgreSQL has "
                f"only {self.available} available; lower workers, gevent_workers, db_maxconn, "
                f"db_maxconn_gevent or max_cron_threads, or raise max_connections.")

    def format_table(self) -> str:
        """An aligned text table: one line per process kind, totals, server slots, verdict."""
        header = ("process kind", "count", "each", "total", "note")
        lines = [(r.kind, str(r.count), str(r.each), str(r.total), r.note) for r in self.rows]
        s = self.server
        width = [max(len(line[i]) for line in [header, *lines]) for i in range(4)]
        width[3] = max(width[3], *(len(str(v)) for v in (self.total, s.max_connections)))

        def fmt(cells):
            kind, count, each, total, note = cells
            text = (f"{kind:<{width[0]}}  {count:>{width[1]}}  x {each:>{width[2]}}"
                    f"  = {total:>{width[3]}}")
            return (text + "  " + note).rstrip()

        end = len(fmt(header)) - len("  " + header[4])     # where the totals column ends
        out = [fmt(header), "-" * len(fmt(header))]
        out += [fmt(line) for line in lines]
        out.append("-" * len(fmt(header)))

        def total_line(text, value):
            return f"{text:<{end - width[3] - 2}}  {value:>{width[3]}}"

        out += [
            total_line("rtbus may open at most", self.total),
            "",
            total_line("PostgreSQL max_connections", s.max_connections),
            total_line("- superuser_reserved_connections", s.superuser_reserved_connections),
        ]
        if s.reserved_connections:
            out.append(total_line("- reserved_connections", s.reserved_connections))
        out += [
            total_line("- connections in use now", s.in_use),
            total_line("= available to rtbus", self.available),
            "",
            self.sentence(),
        ]
        return "\n".join(out)


def listen_databases(config) -> list[str]:
    """The databases ImDispatch LISTENs on: the imbus database, then each served one."""
    names = [config.imbus_db_name]
    names += [name for name in served_databases(config) if name not in names]
    return names


def compute_budget(config, server: ServerInfo) -> Budget:
    """The deployment's worst-case connections per process kind, against `server`."""
    workers = config.workers
    crons = config.max_cron_threads
    gevent_pool = pool_size(config, "gevent")
    listen_dbs = listen_databases(config)
    served = served_databases(config)
    rows = []
    evented = 1
    if workers > 0:
        evented = gevent_worker_count(config)
        rows.append(BudgetRow("HTTP workers", workers, pool_size(config, "http"),
                              "one request at a time; db_maxconn caps it"))
        rows.append(BudgetRow("gevent workers" if evented > 1 else "gevent process", evented,
                              gevent_pool, "db_maxconn_gevent"))
        publishers = workers + evented + crons
    else:
        rows.append(BudgetRow("single process", 1, gevent_pool,
                              "db_maxconn_gevent (workers=0)"))
        publishers = 1
    if crons:
        rows.append(BudgetRow("cron workers" if workers > 0 else "cron greenlet", crons if workers > 0 else 1,
                              pool_size(config, "cron"), "own pool of 2"))
    rows.append(BudgetRow("LISTEN (ImDispatch)", evented, len(listen_dbs),
                          "one per evented process; databases: " + ", ".join(listen_dbs)))
    # A publisher whose own database is the imbus database NOTIFYs on its own connection.
    notify_each = 0 if served == [config.imbus_db_name] else 1
    rows.append(BudgetRow("NOTIFY (after commit)", publishers, notify_each,
                          f"one to {config.imbus_db_name} per publishing process"))
    rows.append(BudgetRow("master", 1, 0, "1 transient at start-up, not held"))
    return Budget(tuple(rows), server)


def read_server_info(conn) -> ServerInfo:
    """Read the connection limits and current usage from the server behind `conn`.

    Leaves `conn` idle. Counts client backends other than `conn`'s own.
    """
    with conn.cursor() as cur:
        cur.execute("""
            SELECT current_setting('max_connections')::int,
                   current_setting('superuser_reserved_connections')::int,
                   coalesce(current_setting('reserved_connections', true), '0')::int,
                   current_setting('server_version_num')::int,
                   (SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())::int
        """)
        max_conn, su_reserved, reserved, version, in_use = cur.fetchone()
    if not conn.autocommit:
        conn.rollback()
    return ServerInfo(max_conn, su_reserved, reserved, in_use, version)


def check_budget(config, conn) -> Budget:
    """compute_budget() against the server `conn` is connected to."""
    return compute_budget(config, read_server_info(conn))
