"""Logging: the log file survives external rotation, and a burst of misrouted requests logs once."""

from __future__ import annotations

import os
import re

import pytest

from ops_helpers import ops_env
from serverproc import ServerProcess, http_get, wait_until

pytestmark = pytest.mark.timeout(90)

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\d+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) "
                  r"(rtbus[\w.]*): ")


@pytest.fixture(scope="module")
def logged_server(pg_cluster, ops_db, tmp_path_factory):
    base = tmp_path_factory.mktemp("logging")
    logfile = str(base / "rtbus.log")
    # The harness reads the file the server logs to (its stdout goes there too, unused).
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0", "--gevent-port=0",
                            f"--logfile={logfile}", f"--runtime-dir={base / 'run'}"],
                           ops_env(pg_cluster, ops_db), logfile)
    server.logfile = logfile
    server.start()
    yield server
    server.stop()


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def test_lines_are_odoo_like(logged_server):
    lines = [line for line in logged_server.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert LINE.match(line), line


def test_the_log_file_survives_external_rotation(logged_server):
    path = logged_server.logfile
    rotated = path + ".1"
    os.rename(path, rotated)          # what logrotate does (without copytruncate)
    http_get(logged_server.http_port, "/?mark=after-rotation")
    http_get(logged_server.longpolling_port, "/websocket/health?mark=after-rotation")
    worker = logged_server.children_titled("rtbus: http worker")[0]
    gevent_pid = logged_server.children_titled("rtbus: gevent")[0]

    def both_in_new_file():
        if not os.path.exists(path):
            return False
        text = _read(path)
        return (f" {worker} INFO" in text and f" {gevent_pid} INFO" in text
                and text.count("mark=after-rotation") >= 2)

    wait_until(both_in_new_file, 10, message="both processes logging into a new file with the same name")
    assert "mark=after-rotation" not in _read(rotated)


def test_a_burst_of_misrouted_websockets_logs_one_line(logged_server):
    statuses = [http_get(logged_server.http_port, "/websocket", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})[0] for _ in range(25)]
    assert statuses == [421] * 25
    wait_until(lambda: logged_server.log().count('"GET /websocket HTTP/1.1" 421') >= 25, 10,
               message="25 access lines")
    warnings = [line for line in logged_server.log().splitlines() if "Couldn't bind the websocket" in line]
    assert len(warnings) == 1, warnings
    assert " WARNING " in warnings[0] and "route /websocket to the longpolling port" in warnings[0]
