"""How rtbus reaches PostgreSQL: connect arguments from the Config, the served databases,
and a start-up check that turns connection failures into one sentence an operator can act on.
"""

from __future__ import annotations

import contextlib
import math
import re

import psycopg2

from rtbus.errors import DatabaseUnavailable

DEFAULT_DATABASE = "rtbus"

# Used by check_server() when the Config leaves db_connect_timeout unset.
DEFAULT_CHECK_TIMEOUT = 5

# Config attribute -> libpq keyword.
_SETTINGS = (
    ("db_host", "host"),
    ("db_port", "port"),
    ("db_user", "user"),
    ("db_password", "password"),
    ("db_sslmode", "sslmode"),
    ("db_connect_timeout", "connect_timeout"),
)

_PREAMBLE = re.compile(r'^connection to server (at|on) .*? failed: ')

# Fragments of libpq/server messages, checked in this order.
_BAD_CREDENTIALS = ("password authentication failed", "authentication failed", "role ",
                    "no pg_hba.conf entry", "no password supplied", "password is required",
                    "permission denied for database")


def connect_kwargs(config, *, dbname: str, application_name: str) -> dict:
    """psycopg2.connect() keyword arguments for `dbname` from the Config's db_* settings.

    Settings left at None are omitted, so libpq applies its own defaults (and PG*
    environment variables).
    """
    kwargs = {}
    for attribute, keyword in _SETTINGS:
        value = getattr(config, attribute)
        if value is not None:
            kwargs[keyword] = value
    if kwargs.get("connect_timeout"):
        # libpq takes whole seconds, 0 meaning forever: round up so 0.5 stays bounded.
        kwargs["connect_timeout"] = math.ceil(float(kwargs["connect_timeout"]))
    kwargs.update(keepalive_kwargs(config))
    kwargs["dbname"] = dbname
    kwargs["application_name"] = application_name
    return kwargs


def keepalive_kwargs(config) -> dict:
    """libpq's TCP liveness options from the db_keepalives_* and db_tcp_user_timeout settings.

    A server that vanishes without closing (power loss, a partition, a failover that
    moved its address) sends neither FIN nor RST: without these a LISTEN connection
    would wait for a notification for ever and a pooled one would fail only at its next
    query. Settings at 0 keep libpq's and the system's defaults. libpq
    ignores them on Unix sockets.
    """
    kwargs = {"keepalives": 1}
    for attribute, keyword in (("db_keepalives_idle", "keepalives_idle"),
                               ("db_keepalives_interval", "keepalives_interval"),
                               ("db_keepalives_count", "keepalives_count")):
        value = getattr(config, attribute)
        if value:
            kwargs[keyword] = int(value)
    user_timeout = milliseconds(config.db_tcp_user_timeout)
    if user_timeout:
        kwargs["tcp_user_timeout"] = user_timeout
    return kwargs


def served_databases(config) -> list[str]:
    """The databases named by config.db_name (comma separated), in order; ["rtbus"] when unset."""
    raw = config.db_name
    names = []
    for name in (raw or "").split(","):
        name = name.strip()
        if name and name not in names:
            names.append(name)
    return names or [DEFAULT_DATABASE]


def check_server(config) -> None:
    """Connect once to the server's `postgres` database to prove it is reachable and accepts us.

    A missing served database is not an error here (the schema step creates it).
    Returns within about db_connect_timeout seconds (5 when unset; 0 waits as long
    as libpq does, which the operator asked for). Raises
    DatabaseUnavailable saying whether the server is unreachable, rejected the
    credentials, or lacks the maintenance database.
    """
    kwargs = connect_kwargs(config, dbname="postgres", application_name="rtbus-check")
    kwargs.setdefault("connect_timeout", DEFAULT_CHECK_TIMEOUT)
    where = _describe_server(kwargs)
    try:
        psycopg2.connect(**kwargs).close()
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(_explain(exc, where, kwargs)) from exc


def _explain(exc: psycopg2.OperationalError, where: str, kwargs: dict) -> str:
    detail = _detail(exc)
    lowered = detail.lower()
    user = kwargs.get("user", "(default)")
    if any(fragment in lowered for fragment in _BAD_CREDENTIALS):
        return (f"PostgreSQL at {where} rejected the credentials of user {user}: {detail} "
                "(check db_user and db_password).")
    if 'database "' in lowered and "does not exist" in lowered:
        return (f"PostgreSQL at {where} accepted user {user} but has no postgres database: {detail} "
                "(create it, or point db_host/db_port at another server).")
    return (f"cannot reach PostgreSQL at {where}: {detail} (is the server running, "
            "and are db_host and db_port right?).")


def _describe_server(kwargs: dict) -> str:
    host = kwargs.get("host") or "the default socket"
    port = kwargs.get("port")
    return f"{host}:{port}" if port is not None else str(host)


def _detail(exc: BaseException) -> str:
    """libpq's message on one line, without the "connection to server ... failed:" preamble
    that repeats the address we already name."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    text = _PREAMBLE.sub("", text)
    return text or type(exc).__name__


def process_pool(config, *, name: str, maxconn: int):
    """The connection pool of one rtbus process, sized and bounded by the configuration.

    `name` is the pool's name in logs, errors and metrics ("http", "gevent",
    "cron"); connections carry ``application_name = rtbus:<name>`` so that
    pg_stat_activity shows which process holds them.
    """
    from rtbus.db.pool import ConnectionPool

    kwargs = connect_kwargs(config, dbname="", application_name=f"rtbus:{name}")
    del kwargs["dbname"]   # the pool serves every database, one connection at a time
    return ConnectionPool(name, maxconn, kwargs, timeout=config.db_pool_timeout,
                          max_waiting=config.db_pool_max_waiting,
                          on_connect=guard_rails(config))


def guard_rails(config):
    """An on_connect hook setting db_statement_timeout and db_lock_timeout on a new session,
    or None when both are off.

    The settings are committed at once: a SET inside a transaction that the borrower
    later rolls back would be undone with it.
    """
    timeouts = [(parameter, milliseconds(getattr(config, setting)))
                for parameter, setting in (("statement_timeout", "db_statement_timeout"),
                                           ("lock_timeout", "db_lock_timeout"))]
    timeouts = [(parameter, value) for parameter, value in timeouts if value]
    if not timeouts:
        return None

    def apply(conn) -> None:
        with conn.cursor() as cur:
            for parameter, value in timeouts:
                cur.execute(f"SET {parameter} = %s", (value,))
        conn.commit()

    return apply


def milliseconds(seconds: float | None) -> int:
    """PostgreSQL's integer milliseconds for a timeout in seconds; a positive value stays positive."""
    if not seconds:
        return 0
    return max(1, round(float(seconds) * 1000))


@contextlib.contextmanager
def own_transactions(conn):
    """Run a block that commits its own transactions on `conn`, outside autocommit.

    On an exception the open transaction is rolled back and the exception goes on;
    `conn`'s autocommit setting is restored either way.
    """
    saved_autocommit, conn.autocommit = conn.autocommit, False
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = saved_autocommit
