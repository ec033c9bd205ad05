"""/longpolling/poll on real servers, over real HTTP: backlog, wake-up, timeout, departures,
a thousand held polls, sessions, misrouting, and a database that dies and comes back."""

from __future__ import annotations

import http.client
import json
import re
import resource
import selectors
import signal
import socket
import threading
import time

import orjson
import pytest

import pgcluster
from http_client import post_json
from rtbus.session import create_session, revoke_session
from serverproc import wait_until
from waiting import wait_metric

POLL = "/longpolling/poll"


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


# Session checks go to the database every time here: the tests revoke sessions
# in the middle of polls.
NO_SESSION_CACHE = {"RTBUS_SESSION_CHECK_CACHE_SECONDS": "0"}


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers("--log-level=debug", name="longpoll", RTBUS_LONGPOLLING_TIMEOUT="30",
                          RTBUS_PUBLIC_CHANNELS="room,quiet,crowd", **NO_SESSION_CACHE)


@pytest.fixture(scope="module")
def short_server(module_servers):
    """One-second polls, and room for two of them only."""
    return module_servers("--longpolling-max-polls=2", name="shortpoll", RTBUS_LONGPOLLING_TIMEOUT="1",
                          RTBUS_PUBLIC_CHANNELS="room,quiet", **NO_SESSION_CACHE)


@pytest.fixture(scope="module")
def db(module_conn):
    return module_conn


@pytest.fixture(scope="module")
def publish(module_publish):
    return lambda channel, notification_type="n", payload=None: module_publish(
        channel, notification_type, payload)[0]


def call(params, request_id=1) -> dict:
    return {"jsonrpc": "2.0", "method": "call", "params": params, "id": request_id}


def poll(port, channels, last, *, sid=None, options=None, timeout=40.0):
    params = {"channels": channels, "last": last}
    if options is not None:
        params["options"] = options
    headers = {"Cookie": f"session_id={sid}"} if sid else None
    return post_json(port, POLL, call(params), headers, timeout=timeout)


def in_thread(func, *args, **kwargs):
    box = {}

    def run():
        box["result"] = func(*args, **kwargs)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def ids_of(body) -> list[int]:
    return [n["id"] for n in body["result"]]


# -- answers ---------------------------------------------------------------------------------


def test_backlog_is_answered_at_once(server, publish):
    before = publish("room", "before")
    first, second = publish("room", "a", {"x": 1}), publish("room", "b", [2])
    status, headers, body = poll(server.longpolling_port, ["room"], before)
    assert status == 200, body
    assert body["id"] == 1 and body["jsonrpc"] == "2.0"
    assert body["result"] == [{"id": first, "message": {"type": "a", "payload": {"x": 1}}},
                              {"id": second, "message": {"type": "b", "payload": [2]}}]
    assert headers["Cache-Control"] == "no-store"


def test_first_poll_replays_the_recent_backlog(server, publish):
    recent = publish("room", "recent")
    status, _, body = poll(server.longpolling_port, ["room"], 0)
    assert status == 200 and recent in ids_of(body)


def test_poll_waits_and_wakes_on_publish(server, publish):
    last = publish("quiet", "marker")
    thread, box = in_thread(poll, server.longpolling_port, ["quiet"], last)
    thread.join(0.5)
    assert thread.is_alive(), "the poll answered before anything was published"
    fresh = publish("quiet", "wake", "up")
    thread.join(10)
    status, _, body = box["result"]
    assert status == 200
    assert body["result"] == [{"id": fresh, "message": {"type": "wake", "payload": "up"}}]


def test_poll_times_out_with_an_empty_list(short_server, publish):
    last = publish("quiet", "marker")
    started = time.monotonic()
    status, _, body = poll(short_server.longpolling_port, ["quiet"], last, timeout=10)
    assert status == 200 and body["result"] == []
    print(f"empty answer after {time.monotonic() - started:.2f} s (longpolling_timeout 1 s)")


def test_polls_beyond_the_bound_get_503_with_retry_after(short_server, publish):
    last = publish("quiet", "marker")
    holders = [in_thread(poll, short_server.longpolling_port, ["quiet"], last, timeout=10)
               for _ in range(2)]
    wait_metric(short_server.longpolling_port, "rtbus_longpolls_open", 2)
    status, headers, body = poll(short_server.longpolling_port, ["quiet"], last, timeout=10)
    for thread, _ in holders:
        thread.join(10)
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0
    assert "longpolling_max_polls" in body["error"]["data"]["message"]
    assert [box["result"][0] for _, box in holders] == [200, 200]


def test_a_client_that_disconnects_releases_its_wait(server, publish):
    last = publish("quiet", "marker")
    released = r"long-poll #\d+ released after [\d.]+ s: the client disconnected \((\d+) held\)"
    count = len(re.findall(released, server.log()))
    sock = socket.create_connection(("127.0.0.1", server.longpolling_port), timeout=5)
    try:
        body = orjson.dumps(call({"channels": ["quiet"], "last": last}))
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (POLL.encode(), len(body), body))
        wait_metric(server.longpolling_port, "rtbus_longpolls_open", 1)     # the poll is now waiting
    finally:
        sock.close()
    match = server.wait_log(released, timeout=10, count=count + 1)[-1]
    assert match.group(1) == "0"


# -- many at once ----------------------------------------------------------------------------


class PollFleet:
    """N polls on N raw sockets, driven by one selector (no thread per poll)."""

    def __init__(self, port: int, count: int, channels, last: int):
        body = orjson.dumps(call({"channels": channels, "last": last}))
        request = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                   % (POLL.encode(), len(body), body))
        self.selector = selectors.DefaultSelector()
        self.replies: dict[socket.socket, bytearray] = {}
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self.replies[sock] = bytearray()
            self.selector.register(sock, selectors.EVENT_READ)

    def collect(self, timeout: float) -> list[bytes]:
        """Read until every server closed its side (Connection: close), or `timeout`."""
        open_count = len(self.replies)
        deadline = time.monotonic() + timeout
        while open_count and time.monotonic() < deadline:
            for key, _ in self.selector.select(max(deadline - time.monotonic(), 0.01)):
                chunk = key.fileobj.recv(65536)
                if chunk:
                    self.replies[key.fileobj].extend(chunk)
                else:
                    self.selector.unregister(key.fileobj)
                    open_count -= 1
        return [bytes(reply) for reply in self.replies.values()]

    def close(self) -> None:
        for sock in self.replies:
            sock.close()
        self.selector.close()


def _bodies(replies: list[bytes]) -> list:
    out = []
    for reply in replies:
        head, _, body = reply.partition(b"\r\n\r\n")
        out.append((head.split(b" ", 2)[1] if head else b"", json.loads(body) if body else None))
    return out


@pytest.mark.timeout(120)
def test_a_thousand_polls_woken_by_one_publish_all_receive_it(server, publish):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    last = publish("crowd", "marker")
    started = time.monotonic()
    fleet = PollFleet(server.longpolling_port, 1000, ["crowd"], last)
    try:
        connected = time.monotonic() - started
        wait_metric(server.longpolling_port, "rtbus_longpolls_open", 1000, timeout=60)   # every one held
        fresh = publish("crowd", "everyone", {"n": 1})
        replies = _bodies(fleet.collect(timeout=60))
    finally:
        fleet.close()
    statuses = [status for status, _ in replies]
    assert statuses.count(b"200") == 1000, sorted(set(statuses))
    expected = [{"id": fresh, "message": {"type": "everyone", "payload": {"n": 1}}}]
    assert all(body["result"] == expected for _, body in replies)
    print(f"1000 polls connected in {connected:.2f} s, all answered "
          f"{time.monotonic() - started - connected:.2f} s later")


# -- sessions and presence -------------------------------------------------------------------


def new_session(db, uid=5, partner_id=50) -> str:
    sid = create_session(db, uid, partner_id, [])
    db.commit()
    return sid


def test_signed_in_poll_gets_its_partner_channel(server, db, publish, bus_db):
    sid = new_session(db, 5, 50)
    last = publish("quiet", "marker")
    thread, box = in_thread(poll, server.longpolling_port, [], last, sid=sid)
    wait_metric(server.longpolling_port, "rtbus_longpolls_open", 1)
    fresh = publish(("res.partner", 50), "private")
    thread.join(10)
    status, _, body = box["result"]
    assert status == 200 and ids_of(body) == [fresh]


def test_stale_session_is_error_100(server, db):
    sid = new_session(db)
    revoke_session(db, sid)
    db.commit()
    status, _, body = poll(server.longpolling_port, ["room"], 0, sid=sid)
    assert status == 200
    assert body["error"]["code"] == 100
    assert body["error"]["message"] == "Odoo Session Expired"
    assert body["error"]["data"]["name"] == "odoo.http.SessionExpiredException"


def test_logout_during_the_wait_withholds_the_notifications(server, db, publish):
    sid = new_session(db, 6, 60)
    last = publish("quiet", "marker")
    thread, box = in_thread(poll, server.longpolling_port, [], last, sid=sid)
    wait_metric(server.longpolling_port, "rtbus_longpolls_open", 1)
    revoke_session(db, sid)
    db.commit()
    publish(("res.partner", 60), "secret")
    thread.join(10)
    status, _, body = box["result"]
    assert status == 200 and body["error"]["code"] == 100
    assert "result" not in body


def test_bus_inactivity_option_records_presence(server, db, publish):
    sid = new_session(db, 7, 70)
    status, _, body = poll(server.longpolling_port, ["odoo-presence-res.partner_70"], 0, sid=sid,
                           options={"bus_inactivity": 0})
    assert status == 200, body
    statuses = [n["message"]["payload"]["im_status"] for n in body["result"]
                if n["message"]["type"] == "bus.bus/im_status_updated"]
    # On the presence channel, and pushed again by the first poll's after-subscribe hook.
    assert statuses and set(statuses) == {"online"}
    with db.cursor() as cur:
        cur.execute("SELECT status FROM rtbus_presence WHERE user_id = 7")
        assert cur.fetchone() == ("online",)
    db.rollback()


@pytest.mark.parametrize("params, fragment", [
    ({"channels": "room", "last": 0}, "channels must be a list"),
    ({"channels": [1], "last": 0}, "only string channels"),
    ({"channels": ["room"], "last": -1}, "last must be a non-negative integer"),
    ({"channels": ["room"], "last": "7"}, "last must be a non-negative integer"),
    ({"channels": ["room"], "last": 0, "options": []}, "options must be an object"),
    ({"last": 0}, "missing parameter(s): channels"),
    ({"channels": ["room"], "last": 0, "bogus": 1}, "unknown parameter(s): bogus"),
])
def test_invalid_params(server, params, fragment):
    status, _, body = post_json(server.longpolling_port, POLL, call(params))
    assert status == 200
    assert body["error"]["code"] == -32602
    assert fragment in body["error"]["data"]["message"]


def test_invalid_presence_option(server, db):
    sid = new_session(db, 8, 80)
    status, _, body = poll(server.longpolling_port, ["room"], 0, sid=sid,
                           options={"bus_inactivity": "soon"})
    assert body["error"]["code"] == -32602 and "bus_inactivity" in body["error"]["data"]["message"]


@pytest.mark.parametrize("payload, status, code", [
    (b"{not json", 400, -32700),
    (b"[1, 2]", 400, -32600),
    (b'{"jsonrpc": "1.0", "params": {}}', 400, -32600),
    (b'{"jsonrpc": "2.0", "params": [1], "id": 3}', 400, -32600),
])
def test_malformed_bodies(server, payload, status, code):
    got, _, body = post_json(server.longpolling_port, POLL, payload)
    assert got == status
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == code


# -- where it is served ----------------------------------------------------------------------


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_http_worker_refuses_at_once_naming_the_longpolling_port(server, method):
    body = orjson.dumps(call({"channels": ["room"], "last": 0})) if method == "POST" else None
    # Held like a poll, the request would outlive the client's 10 s timeout (polls wait 30 s).
    status, _, raw = request(server.http_port, method, POLL, body)
    assert status == 421
    message = json.loads(raw)["error"]["data"]["message"]
    assert "Long-polling is served on the longpolling port" in message
    server.wait_log(r"Long-polling is served on the longpolling port")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_get_and_head_on_the_evented_port_are_405(server, method):
    status, headers, raw = request(server.longpolling_port, method, POLL)
    assert status == 405 and headers["Allow"] == "POST"
    if method == "GET":
        assert "POST" in json.loads(raw)["error"]["data"]["message"]


def test_single_process_serves_long_polls(start_server, server_env, bus_db, publish):
    single = start_server("--workers=0", "--max-cron-threads=0", env=dict(server_env, RTBUS_DB_NAME=bus_db),
                          name="single")
    last = publish("broadcast", "marker")
    thread, box = in_thread(poll, single.http_port, [], last)
    wait_metric(single.http_port, "rtbus_longpolls_open", 1)
    fresh = publish("broadcast", "single")
    thread.join(10)
    status, _, body = box["result"]
    assert status == 200 and ids_of(body) == [fresh]


def test_graceful_stop_answers_held_polls_at_once(start_server, server_env, bus_db, publish):
    env = dict(server_env, RTBUS_DB_NAME=bus_db, RTBUS_LONGPOLLING_TIMEOUT="120")
    stopping = start_server("--workers=1", "--max-cron-threads=0", env=env, name="stopping")
    last = publish("quiet", "marker")
    thread, box = in_thread(poll, stopping.longpolling_port, ["quiet"], last, timeout=60)
    wait_metric(stopping.longpolling_port, "rtbus_longpolls_open", 1)
    stopping.signal(signal.SIGTERM)
    # Far before the poll's own 120 s: the stop hook answered it.
    thread.join(30)
    assert not thread.is_alive()
    status, _, body = box["result"]
    assert status == 200 and body["result"] == []
    assert stopping.wait_exit(30) == 0
    stopping.wait_log(r"answered 1 held long-poll\(s\): the server is stopping")


# -- a database that dies and comes back -----------------------------------------------------


@pytest.fixture(scope="module")
def crash_db(crash_cluster):
    return pgcluster.create_schema_db(crash_cluster)


@pytest.mark.timeout(120)
def test_dead_database_gives_503_then_recovers(crash_cluster, crash_db, module_servers):
    server = module_servers(name="crashpoll", cluster=crash_cluster, db=crash_db,
                            RTBUS_LONGPOLLING_TIMEOUT="2", **NO_SESSION_CACHE)
    sid = None
    try:
        conn = crash_cluster.connect(crash_db)
        sid = create_session(conn, 9, 90, [])
        conn.commit()
        conn.close()
        crash_cluster.stop(mode="immediate")
        try:
            # The dispatcher notices its LISTEN connections died, the pool cannot connect.
            def refused():
                status, headers, body = poll(server.longpolling_port, ["room"], 0, timeout=10)
                return (status, headers, body) if status == 503 else None
            status, headers, body = wait_until(refused, 15, interval=0.2,
                                               message="a 503 from the poll")
            assert int(headers["Retry-After"]) > 0
            assert body["jsonrpc"] == "2.0" and body["error"]["data"]["message"]
            status, headers, body = poll(server.longpolling_port, ["room"], 0, sid=sid, timeout=10)
            assert status == 503 and "Retry-After" in headers and "error" in body
        finally:
            crash_cluster.start()
        wait_until(lambda: poll(server.longpolling_port, [], 0, sid=sid, timeout=10)[0] == 200,
                   30, interval=0.5, message="the poll to recover")
        assert "Traceback" not in server.log()
    finally:
        server.stop()
