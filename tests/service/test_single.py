"""--workers 0 (one evented process) and the embedded default database."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest

from serverproc import ServerProcess, clean_environ, health_ok, is_alive, wait_until


def test_single_process_serves_every_route_and_stops_cleanly(start_server):
    server = start_server("--workers=0")
    with open(f"/proc/{server.pid}/cmdline", "rb") as f:
        assert f.read().startswith(b"rtbus: single")
    assert health_ok(server.http_port)
    assert server.children() == {}
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    assert "Traceback" not in server.log()


@pytest.fixture
def embedded_dir():
    # The embedded cluster runs as an unprivileged user when the tests run as
    # root, so its directory must be one that user can reach.
    path = tempfile.mkdtemp(prefix="rtbus-embedded-", dir="/tmp")
    os.chmod(path, 0o755)
    yield os.path.join(path, "pgdata")
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_database_is_the_default(embedded_dir, tmp_path):
    env = clean_environ()   # no database configured anywhere
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0", "--gevent-port=0",
                            f"--embedded-db-dir={embedded_dir}"], env, str(tmp_path / "server.log"))
    try:
        server.start(timeout=60)
        server.wait_log(rf"embedded PostgreSQL in {embedded_dir}")
        assert health_ok(server.http_port) and health_ok(server.longpolling_port)
        pid_file = os.path.join(embedded_dir, "postmaster.pid")
        with open(pid_file) as f:
            postmaster = int(f.readline())
        server.signal(signal.SIGTERM)
        assert server.wait_exit(40) == 0
        wait_until(lambda: not is_alive(postmaster), 10, message="the embedded PostgreSQL to stop")
    finally:
        server.stop()
