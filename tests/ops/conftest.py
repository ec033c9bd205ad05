"""Fixtures of the operations tests: one prefork deployment shared by the files of this
directory, a publisher, and a real nginx in front of it."""

from __future__ import annotations

import pytest

import pgcluster
from buspublish import Publish
from ops_helpers import Nginx, nginx_binary, ops_env
from serverproc import ServerProcess


@pytest.fixture(scope="session")
def ops_db(pg_cluster):
    name = pgcluster.create_schema_db(pg_cluster, "rtbus_ops")
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def ops_server(pg_cluster, ops_db, tmp_path_factory):
    """A prefork deployment (2 HTTP workers, gevent, 1 cron) with proxy_mode and its own runtime_dir."""
    base = tmp_path_factory.mktemp("ops")
    runtime_dir = str(base / "run")
    server = ServerProcess(
        ["--workers=2", "--max-cron-threads=1", "--http-port=0", "--gevent-port=0", "--proxy-mode",
         f"--runtime-dir={runtime_dir}"],
        ops_env(pg_cluster, ops_db), str(base / "server.log"))
    server.runtime_dir = runtime_dir
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ops_publish(pg_cluster, ops_db):
    """publish(channel, type, payload) -> [id], straight into the ops database."""
    publisher = Publish(pg_cluster, ops_db)
    yield publisher
    publisher.close()


@pytest.fixture(scope="session")
def nginx_bin():
    # Present: tests using this fixture are skipped at collection otherwise.
    return nginx_binary()


@pytest.fixture(scope="session")
def nginx(nginx_bin, ops_server, tmp_path_factory):
    proxy = Nginx(nginx_bin, str(tmp_path_factory.mktemp("nginx")), ops_server.http_port,
                  ops_server.longpolling_port)
    checked = proxy.test_config()
    assert checked.returncode == 0, f"nginx -t refused the rendered sample:\n{checked.stderr}"
    proxy.start()
    yield proxy
    proxy.stop()
