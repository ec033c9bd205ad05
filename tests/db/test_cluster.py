"""Cluster: init, start, reuse, stop, restart and kill a real PostgreSQL."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import psycopg2
import pytest

import pgcluster
from rtbus.db import cluster as cluster_module
from rtbus.db.cluster import Cluster, find_bindir
from rtbus.errors import ClusterError


def test_find_bindir_has_server_binaries():
    bindir = find_bindir()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bindir / name, os.X_OK)


def test_find_bindir_honours_and_checks_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RTBUS_PG_BINDIR", str(find_bindir()))
    assert find_bindir() == pathlib.Path(os.environ["RTBUS_PG_BINDIR"])
    monkeypatch.setenv("RTBUS_PG_BINDIR", str(tmp_path))
    with pytest.raises(ClusterError, match="RTBUS_PG_BINDIR"):
        find_bindir()


def test_session_cluster_accepts_socket_and_tcp(pg_cluster):
    assert pg_cluster.is_running() and pg_cluster.pid() > 0
    with pg_cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_setting('fsync')")
        assert cur.fetchone() == ("postgres", "off")
    tcp = psycopg2.connect(host="127.0.0.1", port=pg_cluster.port, user="postgres", dbname="postgres")
    tcp.close()


def test_create_and_drop_database(pg_cluster):
    name = pgcluster.unique_name()
    pg_cluster.create_database(name, template="template0")
    holder = pg_cluster.connect(name)  # drop_database must terminate it
    try:
        pg_cluster.drop_database(name)
    finally:
        holder.close()
    with pg_cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert cur.fetchone()[0] == 0
    pg_cluster.drop_database(name)  # missing: no error


def test_lifecycle_kill_restart_and_reuse(crash_cluster):
    assert crash_cluster.init() is False            # already initialised
    assert crash_cluster.start() is False           # already running
    adopted = Cluster(crash_cluster.datadir)        # a second handle adopts port and socket
    assert (adopted.port, adopted.host) == (crash_cluster.port, crash_cluster.host)
    assert adopted.pid() == crash_cluster.pid()

    old_pid = crash_cluster.pid()
    crash_cluster.kill()
    assert not crash_cluster.is_running() and crash_cluster.pid() is None
    with pytest.raises(psycopg2.OperationalError):
        crash_cluster.connect(connect_timeout=2)
    assert crash_cluster.start() is True            # recovers despite the stale lock files
    assert crash_cluster.pid() != old_pid

    crash_cluster.restart()
    with crash_cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    crash_cluster.stop()
    assert not crash_cluster.is_running()
    crash_cluster.stop()                            # stopping a stopped cluster is a no-op
    assert crash_cluster.start() is True


def test_long_datadir_gets_a_short_socket_dir():
    base = pathlib.Path(tempfile.mkdtemp(prefix="rtbus-deep-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        deep = base / ("d" * 90)
        deep.mkdir(mode=0o755)
        cluster = Cluster(deep / "data", fast=True)
        assert len(str(cluster.datadir / f".s.PGSQL.{cluster.port}")) > cluster_module.MAX_SOCKET_PATH
        try:
            assert cluster.init() is True
            assert cluster.start() is True
            assert pathlib.Path(cluster.host).parent == pathlib.Path("/tmp")
            with cluster.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            cluster.destroy()
        assert not pathlib.Path(cluster.host).exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_start_without_init_is_a_clear_error(tmp_path):
    cluster = Cluster(tmp_path / "nothing")
    with pytest.raises(ClusterError, match="init"):
        cluster.start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the data directory reachable by another account")
def test_unreachable_datadir_as_root_is_explained(tmp_path):
    # pytest's tmp_path lives under a 0700 root directory the server account cannot enter.
    cluster = Cluster(tmp_path / "data")
    with pytest.raises(ClusterError, match="cannot reach"):
        cluster.init()
