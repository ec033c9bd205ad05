"""The routes behind the browser client: static files, the board at /, the demo routes, and
the long-poll's CORS rule for the deployment's own page."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

import pgcluster
from http_client import post_json
from serverproc import ServerProcess, clean_environ, http_get

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ops"))
from ops_helpers import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(90)

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _server(pg_cluster, dbname, directory, *args) -> ServerProcess:
    env = clean_environ()
    env.update(pgcluster.env_for(pg_cluster), RTBUS_DB_NAME=dbname)
    return ServerProcess([*args, f"--runtime-dir={directory / 'run'}"], env,
                         str(directory / "server.log")).start()


@pytest.fixture(scope="module")
def demo_server(pg_cluster, module_db, tmp_path_factory):
    server = _server(pg_cluster, module_db, tmp_path_factory.mktemp("demo"), "--workers=2",
                     "--max-cron-threads=0", f"--http-port={free_port()}", f"--gevent-port={free_port()}",
                     "--demo-mode")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def single_server(pg_cluster, module_db, tmp_path_factory):
    server = _server(pg_cluster, module_db, tmp_path_factory.mktemp("single"), "--workers=0",
                     "--http-port=0", "--max-cron-threads=0")
    yield server
    server.stop()


def rpc(port, path, params=None, headers=None):
    return post_json(port, path, {"jsonrpc": "2.0", "method": "call", "id": 1, "params": params or {}},
                     headers)


# -- static files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, content_type", [
    ("rtbus-worker.js", "text/javascript; charset=utf-8"),
    ("rtbus-bus.js", "text/javascript; charset=utf-8"),
    ("demo.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
])
def test_static_files_have_their_content_type_and_must_be_revalidated(demo_server, name, content_type):
    status, headers, body = http_get(demo_server.http_port, f"/static/{name}")
    assert status == 200
    assert headers["Content-Type"] == content_type
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert re.fullmatch(r'"[0-9a-f]{16}"', headers["ETag"])
    with open(os.path.join(os.path.dirname(__import__("rtbus").__file__), "static", name), "rb") as f:
        assert body == f.read()


def test_a_versioned_static_url_is_immutable_and_an_etag_match_is_304(demo_server):
    _status, headers, _body = http_get(demo_server.http_port, "/static/rtbus-worker.js")
    version = headers["ETag"].strip('"')
    status, headers, _body = http_get(demo_server.http_port, f"/static/rtbus-worker.js?v={version}")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=31536000, immutable"
    status, headers, body = http_get(demo_server.http_port, "/static/rtbus-worker.js",
                                     headers={"If-None-Match": f'"{version}"'})
    assert (status, body) == (304, b"")
    status, headers, _body = http_get(demo_server.http_port, "/static/rtbus-worker.js?v=stale")
    assert headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../config.py", "/static/%2e%2e/cli.py",
                                  "/static/demo.html.bak"])
def test_only_files_of_the_static_directory_are_served(demo_server, path):
    status, _headers, _body = http_get(demo_server.http_port, path)
    assert status == 404


def test_the_evented_process_serves_the_worker_script_too(demo_server):
    status, headers, _body = http_get(demo_server.longpolling_port, "/static/rtbus-worker.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


# -- the board and the JSON index --------------------------------------------------------------


def test_programs_still_get_the_json_index_at_slash(demo_server):
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        status, answer_headers, body = http_get(demo_server.http_port, "/", headers=headers)
        assert status == 200 and answer_headers["Content-Type"] == "application/json"
        assert json.loads(body)["server"] == "rtbus"
    status, _headers, body = http_get(demo_server.http_port, "/index.json")
    assert "/demo/session" in json.loads(body)["routes"]


def test_browsers_get_the_board_told_where_the_longpolling_port_is(demo_server):
    status, headers, body = http_get(demo_server.http_port, "/", headers={"Accept": BROWSER_ACCEPT})
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    page = body.decode()
    assert f'data-bus-url="http://127.0.0.1:{demo_server.longpolling_port}"' in page
    assert 'data-worker-version="19.0-2"' in page
    assert 'data-demo-mode="on"' in page
    assert "{{" not in page
    for url in re.findall(r'(?:src|href|data-worker-url)="(/static/[^"]+)"', page):
        status, headers, _body = http_get(demo_server.http_port, url)
        assert status == 200 and headers["Cache-Control"].endswith("immutable"), url


def test_in_single_mode_the_board_uses_its_own_origin_and_the_demo_is_off(single_server):
    port = single_server.http_port
    _status, _headers, body = http_get(port, "/", headers={"Accept": BROWSER_ACCEPT})
    page = body.decode()
    assert 'data-bus-url=""' in page and 'data-demo-mode="off"' in page
    for route in ("/demo/session", "/demo/people", "/demo/publish"):
        status, _headers, answer = rpc(port, route, {"channel": "demo.lobby", "text": "x"}
                                       if route == "/demo/publish" else {})
        assert status == 404, answer
        assert "demo_mode" in answer["error"]["data"]["message"]


# -- the demo routes ---------------------------------------------------------------------------


def _cookie(headers) -> str:
    match = re.match(r"session_id=([^;]+);", headers["Set-Cookie"])
    assert match, headers["Set-Cookie"]
    return match.group(1)


def test_a_demo_session_is_created_once_and_kept_by_its_cookie(demo_server):
    status, headers, answer = rpc(demo_server.http_port, "/demo/session")
    assert status == 200, answer
    me = answer["result"]
    assert me["created"] is True and me["uid"] == me["partner_id"]
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    sid = _cookie(headers)
    assert sid not in json.dumps(answer)   # the sid only travels in the HttpOnly cookie

    status, headers, again = rpc(demo_server.http_port, "/demo/session", headers={"Cookie": f"session_id={sid}"})
    assert again["result"] == {**me, "created": False}
    assert "Set-Cookie" not in headers
    _status, _headers, listed = rpc(demo_server.http_port, "/demo/people")
    assert me["partner_id"] in [p["partner_id"] for p in listed["result"]["people"]]


def test_demo_publishing_needs_a_demo_session_and_a_demo_channel(demo_server):
    port = demo_server.http_port
    _status, _headers, answer = rpc(port, "/demo/publish", {"channel": "demo.lobby", "text": "hi"})
    assert answer["error"]["code"] == 100   # no session: Odoo's "session expired"
    _status, headers, _answer = rpc(port, "/demo/session")
    cookie = {"Cookie": f"session_id={_cookie(headers)}"}
    for channel, text in (("broadcast", "hi"), ("demo.UPPER", "hi"), ("demo.lobby", "  "),
                          ("demo.lobby", "x" * 501), (["res.partner", 1], "hi")):
        _status, _headers, answer = rpc(port, "/demo/publish", {"channel": channel, "text": text}, cookie)
        assert answer["error"]["code"] == -32602, (channel, answer)
    status, _headers, answer = rpc(port, "/demo/publish", {"channel": "demo.lobby", "text": "hello"}, cookie)
    assert status == 200 and isinstance(answer["result"]["id"], int)


# -- the long-poll's CORS rule -----------------------------------------------------------------


def test_the_long_poll_lets_its_own_page_read_it_and_no_other_origin(demo_server):
    port = demo_server.longpolling_port
    own_page = f"http://127.0.0.1:{demo_server.http_port}"
    # Invalid params: answered at once, through the same wrapper as a held poll.
    bad_poll = {"channels": "not a list", "last": 0}
    _status, headers, _answer = rpc(port, "/longpolling/poll", bad_poll, {"Origin": own_page})
    assert headers.get("Access-Control-Allow-Origin") == own_page
    assert headers.get("Access-Control-Allow-Credentials") == "true"
    for origin in ("http://evil.example", f"http://evil.example:{demo_server.http_port}",
                   f"https://127.0.0.1:{demo_server.http_port}", "http://127.0.0.1:1", "null"):
        _status, headers, _answer = rpc(port, "/longpolling/poll", bad_poll, {"Origin": origin})
        assert "Access-Control-Allow-Origin" not in headers, origin
