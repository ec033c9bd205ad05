"""Fixtures for the bus tests: databases with the rtbus schema, connections, listeners."""

from __future__ import annotations

import select
import time

import psycopg2
import pytest

from rtbus.bus.publish import BusConnection, Notifier


@pytest.fixture
def bus_db(schema_db) -> str:
    """A fresh database with the rtbus schema (bus_bus and the SQL publishing functions)."""
    return schema_db


@pytest.fixture
def connections(pg_cluster):
    """Factory: connect(dbname, bus=False) -> a connection closed at teardown."""
    opened = []

    def connect(dbname: str, bus: bool = False, autocommit: bool = False):
        kwargs = {"connection_factory": BusConnection} if bus else {}
        conn = pg_cluster.connect(dbname, **kwargs)
        conn.autocommit = autocommit
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def notifier():
    """A Notifier to `postgres` (Odoo's imbus database), closed at teardown."""
    n = Notifier("postgres")
    yield n
    n.close()


class Listener:
    """A raw LISTEN imbus connection that counts what it hears."""

    def __init__(self, conn):
        self.conn = conn
        with conn.cursor() as cur:
            cur.execute("LISTEN imbus")

    def collect(self, want: int | None = None, timeout: float = 5.0) -> list[str]:
        """Payloads heard until `want` arrived or `timeout` passed (want=None: the whole timeout)."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while (want is None or len(got) < want) and time.monotonic() < deadline:
            select.select([self.conn], [], [], max(0.0, deadline - time.monotonic()))
            self.conn.poll()
            got.extend(n.payload for n in self.conn.notifies)
            self.conn.notifies.clear()
        return got


@pytest.fixture
def listen(connections):
    """Factory: listen(dbname) -> Listener on a new autocommit connection."""
    def make(dbname: str) -> Listener:
        return Listener(connections(dbname, autocommit=True))
    return make


def _bus_rows(conn, *columns):
    cols = ", ".join(columns or ("id", "channel", "message"))
    with conn.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM bus_bus ORDER BY id")
        rows = cur.fetchall()
    if not conn.autocommit:
        psycopg2.extensions.connection.rollback(conn)
    return rows


@pytest.fixture
def bus_rows():
    """bus_rows(conn, *columns): all bus_bus rows (id, channel, message by default) by id."""
    return _bus_rows
