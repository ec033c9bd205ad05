"""proxy_mode: X-Forwarded-* trusted only with X-Forwarded-Host, and only when it is on."""

from __future__ import annotations

import pytest

from ops_helpers import ops_env
from rtbus.http.proxy import ORIGINAL_KEY, apply_forwarded
from serverproc import ServerProcess, http_get, wait_until

pytestmark = pytest.mark.timeout(90)

FORWARDED = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "X-Forwarded-Host": "bus.example.com",
             "X-Forwarded-Proto": "https"}


def environ(**headers) -> dict:
    env = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8069", "SERVER_NAME": "127.0.0.1",
           "SERVER_PORT": "8069", "wsgi.url_scheme": "http"}
    env.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return env


def test_the_last_forwarded_entries_win():
    env = environ(x_forwarded_for="198.51.100.7, 203.0.113.9", x_forwarded_host="a.example, bus.example.com",
                  x_forwarded_proto="https")
    assert apply_forwarded(env)
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["HTTP_HOST"] == "bus.example.com"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("bus.example.com", "443")
    assert env["wsgi.url_scheme"] == "https"
    assert env[ORIGINAL_KEY]["REMOTE_ADDR"] == "127.0.0.1"


def test_nothing_changes_without_x_forwarded_host():
    env = environ(x_forwarded_for="198.51.100.7", x_forwarded_proto="https")
    before = dict(env)
    assert not apply_forwarded(env)
    assert env == before


def test_bad_scheme_and_host_with_port():
    env = environ(x_forwarded_host="[2001:db8::1]:8443", x_forwarded_proto="gopher")
    apply_forwarded(env)
    assert env["wsgi.url_scheme"] == "http"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("[2001:db8::1]", "8443")
    assert env["REMOTE_ADDR"] == "127.0.0.1"    # no X-Forwarded-For: the peer stays


def _access_line(server, marker: str) -> str:
    return wait_until(lambda: [line for line in server.log().splitlines()
                               if "rtbus.http.access" in line and marker in line],
                      10, message=f"access line for {marker}")[0]


def test_proxy_mode_on_logs_the_forwarded_client(ops_server):
    http_get(ops_server.http_port, "/?mark=on-forwarded", headers=FORWARDED)
    assert "rtbus.http.access: 203.0.113.9 " in _access_line(ops_server, "mark=on-forwarded")
    without_host = {k: v for k, v in FORWARDED.items() if k != "X-Forwarded-Host"}
    http_get(ops_server.http_port, "/?mark=on-no-host", headers=without_host)
    assert "rtbus.http.access: 127.0.0.1 " in _access_line(ops_server, "mark=on-no-host")
    # The gevent process: its access log and the websocket layer's own lines.
    http_get(ops_server.longpolling_port, "/websocket?mark=on-ws", headers=FORWARDED)
    assert "rtbus.http.access: 203.0.113.9 " in _access_line(ops_server, "mark=on-ws")
    wait_until(lambda: "websocket handshake refused (400) for 203.0.113.9" in ops_server.log(), 10,
               message="the handshake refusal naming the forwarded client")


@pytest.fixture(scope="module")
def plain_server(pg_cluster, ops_db, tmp_path_factory):
    base = tmp_path_factory.mktemp("noproxy")
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0", "--gevent-port=0",
                            f"--runtime-dir={base / 'run'}"],
                           ops_env(pg_cluster, ops_db), str(base / "server.log"))
    server.start()
    yield server
    server.stop()


def test_proxy_mode_off_ignores_the_headers(plain_server):
    http_get(plain_server.http_port, "/?mark=off-forwarded", headers=FORWARDED)
    assert "rtbus.http.access: 127.0.0.1 " in _access_line(plain_server, "mark=off-forwarded")
    http_get(plain_server.longpolling_port, "/websocket?mark=off-ws", headers=FORWARDED)
    assert "rtbus.http.access: 127.0.0.1 " in _access_line(plain_server, "mark=off-ws")
    assert "198.51.100.7" not in plain_server.log() and "203.0.113.9" not in plain_server.log()
