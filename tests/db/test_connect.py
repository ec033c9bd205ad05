"""connect: arguments from the Config, served databases, and the start-up server check."""

from __future__ import annotations

import socket
import threading
import time

import psycopg2
import pytest

import pgcluster
from rtbus.config import load_config
from rtbus.db import connect
from rtbus.db.cluster import free_loopback_port
from rtbus.errors import DatabaseUnavailable


def test_connect_kwargs_omit_unset_settings():
    config = load_config([], environ={}).config.replace(db_host="db.example", db_user="bus")
    assert connect.connect_kwargs(config, dbname="rtbus", application_name="rtbus-test") == {
        "host": "db.example", "user": "bus", "sslmode": "prefer", "connect_timeout": 5,
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
        "tcp_user_timeout": 20000, "dbname": "rtbus", "application_name": "rtbus-test"}
    forever = config.replace(db_connect_timeout=0, db_port=6432, db_password="secret")
    kwargs = connect.connect_kwargs(forever, dbname="x", application_name="y")
    assert (kwargs["connect_timeout"], kwargs["port"], kwargs["password"]) == (0, 6432, "secret")


def test_keepalive_settings_at_zero_keep_the_system_defaults():
    config = load_config([], environ={}).config.replace(
        db_keepalives_idle=0, db_keepalives_interval=0, db_keepalives_count=0, db_tcp_user_timeout=0)
    kwargs = connect.connect_kwargs(config, dbname="x", application_name="y")
    assert kwargs["keepalives"] == 1
    assert not {"keepalives_idle", "keepalives_interval", "keepalives_count",
                "tcp_user_timeout"} & set(kwargs)


@pytest.mark.parametrize("db_name, expected", [
    (None, ["rtbus"]),
    ("main", ["main"]),
    (" a, b ,a,, ", ["a", "b"]),
    (" , ", ["rtbus"]),
])
def test_served_databases(db_name, expected):
    config = load_config([], environ={}).config
    if db_name is not None:
        config = config.replace(db_name=db_name)
    assert connect.served_databases(config) == expected


def test_check_server_accepts_a_reachable_server(pg_cluster):
    connect.check_server(pgcluster.config_for(pg_cluster, db_name="does_not_exist_yet"))


def assert_fails_fast(config, pattern, limit=4.0):
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=pattern) as info:
        connect.check_server(config)
    assert time.monotonic() - started < limit
    return str(info.value)


def test_check_server_reports_a_closed_port(pg_cluster):
    port = free_loopback_port()
    config = pgcluster.config_for(pg_cluster, db_port=port)
    message = assert_fails_fast(config, rf"^cannot reach PostgreSQL at 127\.0\.0\.1:{port}: ")
    assert "Connection refused" in message and "db_host and db_port" in message


def test_check_server_reports_a_missing_socket(pg_cluster):
    config = pgcluster.config_for(pg_cluster, db_host="/tmp/rtbus-no-such-dir")
    assert_fails_fast(config, r"^cannot reach PostgreSQL at /tmp/rtbus-no-such-dir:\d+: .*No such file")


def test_check_server_reports_bad_credentials(pg_cluster):
    # The cluster trusts every known role, so an unknown role is how credentials fail here.
    config = pgcluster.config_for(pg_cluster, db_user="ghost", db_password="boo")
    message = assert_fails_fast(config, r"^PostgreSQL at 127\.0\.0\.1:\d+ rejected the credentials of user ghost: ")
    assert 'role "ghost" does not exist' in message and "db_user and db_password" in message


def test_check_server_gives_up_on_a_silent_server(pg_cluster):
    # A listener that accepts and never answers: only connect_timeout ends the wait.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        config = pgcluster.config_for(pg_cluster, db_port=listener.getsockname()[1],
                                      db_connect_timeout=2, db_sslmode="disable")
        assert_fails_fast(config, r"^cannot reach PostgreSQL at .*timeout expired", limit=6.0)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for sock in accepted:
            sock.close()


def test_missing_maintenance_database_is_named(pg_cluster):
    # The server's own wording for a missing database, classified as such.
    with pytest.raises(psycopg2.OperationalError) as info:
        pg_cluster.connect("no_such_database")
    message = connect._explain(info.value, "here:1", {"user": "postgres"})
    assert message.startswith("PostgreSQL at here:1 accepted user postgres but has no postgres database")
