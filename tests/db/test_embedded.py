"""embedded: choosing, locating, starting and reusing the embedded PostgreSQL."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile

import psycopg2
import pytest

from rtbus.config import load_config
from rtbus.db import connect, embedded, schema


def config_from(environ):
    return load_config([], environ=environ).config


@pytest.mark.parametrize("environ, expected", [
    ({}, True),
    ({"RTBUS_DB_HOST": "127.0.0.1"}, False),
    ({"RTBUS_DB_PORT": "5432"}, False),
    ({"RTBUS_DB_USER": "bus"}, False),
    ({"RTBUS_DB_PASSWORD": "x"}, False),
    ({"RTBUS_DB_NAME": "main"}, False),
    ({"RTBUS_DB_SSLMODE": "disable"}, True),   # not a choice of server
])
def test_wants_embedded_only_when_no_server_is_named(environ, expected):
    assert embedded.wants_embedded(config_from(environ)) is expected


def test_default_datadir(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert embedded.default_datadir() == pathlib.Path("/var/lib/rtbus/pgdata")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert embedded.default_datadir() == pathlib.Path("/srv/data/rtbus/pgdata")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/bus")
    assert embedded.default_datadir() == pathlib.Path("/home/bus/.local/share/rtbus/pgdata")


@pytest.fixture
def embedded_dir():
    base = pathlib.Path(tempfile.mkdtemp(prefix="rtbus-embedded-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base / "pgdata"
    # Whatever the test left running goes, then the directory.
    from rtbus.db.cluster import Cluster
    if (base / "pgdata" / "PG_VERSION").exists():
        Cluster(base / "pgdata").destroy()
    shutil.rmtree(base, ignore_errors=True)


def test_start_reuse_stop_and_restart(embedded_dir, caplog):
    config = config_from({}).replace(embedded_db_dir=str(embedded_dir))
    with caplog.at_level(logging.INFO, logger="rtbus.db.embedded"):
        cluster, started, pointed = embedded.start_embedded(config)
    assert started is True
    assert (pointed.db_host, pointed.db_port, pointed.db_user) == (cluster.host, cluster.port, "postgres")
    assert f"embedded PostgreSQL in {embedded_dir} (socket {cluster.host}, port {cluster.port})" in [
        r.getMessage() for r in caplog.records]
    with pytest.raises(psycopg2.OperationalError):   # Unix socket only, no TCP
        psycopg2.connect(host="127.0.0.1", port=cluster.port, user="postgres", connect_timeout=2)
    connect.check_server(pointed)
    assert schema.prepare(pointed, dbname="rtbus")[1] == schema.latest_version()

    again, started_again, pointed_again = embedded.start_embedded(config)
    assert started_again is False and again.pid() == cluster.pid()
    assert (pointed_again.db_host, pointed_again.db_port) == (pointed.db_host, pointed.db_port)

    cluster.stop()
    restarted, started_third, pointed_third = embedded.start_embedded(config)
    assert started_third is True
    with psycopg2.connect(**connect.connect_kwargs(pointed_third, dbname="rtbus",
                                                   application_name="test")) as conn:
        assert schema.current_version(conn) == schema.latest_version()   # the data survived
    restarted.stop()
