"""Several gevent workers on one longpolling port: spread, supervised, drained one at a time."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal

import pytest

import busclient
from rtbus.session import create_session
from serverproc import http_get, is_alive, serving_process, wait_until
from waiting import parse_samples, scrape_text, values

GEVENT = "rtbus: gevent"
CLIENTS = 24

pytestmark = pytest.mark.timeout(120)


def gevent_pids(server) -> list[int]:
    return server.children_titled(GEVENT)


def open_per_process(port: int) -> dict[str, float]:
    """rtbus_websockets_open by process label, as /metrics on `port` reports the whole server."""
    samples = parse_samples(scrape_text(port))
    return {labels["process"]: value for name, labels, value in samples
            if name == "rtbus_websockets_open" and labels.get("kind") == "gevent"}


def spread_over(server, count: int) -> dict[str, float]:
    """Wait until every one of the `count` websockets shows in some gevent worker's snapshot."""
    return wait_until(lambda: (lambda seen: seen if sum(seen.values()) == count else None)(
        open_per_process(server.longpolling_port)), 15, message=f"{count} websockets in the snapshots")


@pytest.fixture
def two_workers(start_server, server_env, module_db):
    server = start_server("--workers=1", "--gevent-workers=2", "--max-cron-threads=0",
                          env={**server_env, "RTBUS_DB_NAME": module_db})
    wait_until(lambda: len(gevent_pids(server)) == 2, 15, message="two gevent workers")
    server.wait_log(r"evented service \(longpolling\) running", count=2, timeout=15)
    return server


def test_two_workers_share_the_port_and_each_gets_clients(two_workers, publish):
    server = two_workers
    assert re.search(r"with 2 gevent workers \(SO_REUSEPORT\)", server.log())
    sockets = [busclient.connect(server.longpolling_port) for _ in range(CLIENTS)]
    try:
        for ws in sockets:
            busclient.subscribe(ws, ["room"])
        seen = spread_over(server, CLIENTS)
        assert len(seen) == 2 and all(count > 0 for count in seen.values()), seen
        # /metrics names each worker by its number, whichever of them answered.
        samples = parse_samples(scrape_text(server.longpolling_port))
        assert sorted(labels["worker"] for name, labels, _ in samples
                      if name == "rtbus_websockets_open" and labels.get("kind") == "gevent") == ["0", "1"]
        assert sum(values(samples, "rtbus_listen_connections", kind="gevent")) == 2 * 2
        assert values(samples, "rtbus_server_websockets_open", kind="server") == [CLIENTS]
        assert values(samples, "rtbus_server_evented_processes", kind="server") == [2]
        # /websocket/health?workers=1 answers for both, whichever of them the probe reaches.
        for _ in range(4):
            status, _headers, body = http_get(server.longpolling_port, "/websocket/health?workers=1")
            answer = json.loads(body)
            assert status == 200 and answer["status"] == "pass", answer
            assert [w["worker"] for w in answer["workers"]] == [0, 1]
            assert answer["websockets"] == CLIENTS and answer["workers_wanted"] == 2
        # A publish reaches the subscribers of both workers, each exactly once.
        notification = publish.one("room", "hello")
        for ws in sockets:
            assert busclient.receive_ids(ws, [notification]) == [notification]
    finally:
        for ws in sockets:
            ws.close()


def test_a_killed_worker_is_replaced_and_its_clients_resume_on_the_other(two_workers, publish):
    server = two_workers
    sockets = [busclient.connect(server.longpolling_port) for _ in range(CLIENTS)]
    for ws in sockets:
        busclient.subscribe(ws, ["relay"])
    spread_over(server, CLIENTS)
    first = publish("relay", "before", count=3)
    for ws in sockets:
        assert busclient.receive_ids(ws, first) == first
    victim = gevent_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not is_alive(victim), 10, message=f"gevent worker {victim} gone")
    # Reaped, so its listening socket is closed: no new connection can queue on it and be reset.
    server.wait_log(rf"gevent process {victim} died \(signal SIGKILL\); respawning", timeout=10)
    # Published while the victim's clients are cut off: they must get these on resuming.
    during = publish("relay", "during", count=3)
    resumed = []
    for ws in sockets:
        if busclient.still_connected(ws):
            assert busclient.receive_ids(ws, during) == during     # the survivor's: live
            ws.close()
            continue
        ws.close()
        fresh = busclient.reconnect(server.longpolling_port)
        busclient.subscribe(fresh, ["relay"], last=first[-1])
        resumed.append(fresh)
    assert resumed, "the killed worker had none of the clients"
    wait_until(lambda: victim not in gevent_pids(server) and len(gevent_pids(server)) == 2, 20,
               message="the killed gevent worker replaced")
    after = publish("relay", "after", count=2)
    try:
        for ws in resumed:
            # Nothing lost, nothing twice: the gap from `last`, then live, in order.
            assert busclient.receive_ids(ws, during + after) == during + after
            assert busclient.nothing_more(ws, wait=0.2)
    finally:
        for ws in resumed:
            ws.close()
    assert "died during boot" not in server.log()


def test_health_of_the_whole_server_fails_while_a_worker_is_stuck(two_workers):
    server = two_workers
    victim = gevent_pids(server)[0]

    def whole_server_status():
        # A probe the kernel hands to the stopped worker is never answered: give up on it
        # soon and probe again (the next one may land on the live worker).
        try:
            return http_get(server.longpolling_port, "/websocket/health?workers=1", timeout=0.5)[0]
        except OSError:
            return None

    os.kill(victim, signal.SIGSTOP)
    try:
        wait_until(lambda: whole_server_status() == 503, 20, message="a 503 naming the stuck worker")
    finally:
        os.kill(victim, signal.SIGCONT)
    wait_until(lambda: whole_server_status() == 200, 20, message="the whole server healthy again")


def test_graceful_stop_drains_the_workers_one_at_a_time(two_workers):
    server = two_workers
    sockets = [busclient.connect(server.longpolling_port) for _ in range(CLIENTS)]
    for ws in sockets:
        busclient.subscribe(ws, ["room"])
    spread_over(server, CLIENTS)
    server.signal(signal.SIGTERM)
    # Every client reads (and answers) its close at once, as browsers do: one read at a
    # time would leave the first worker waiting websocket_response_timeout for answers
    # from clients still blocked on the second worker's sockets.
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as readers:
        codes = list(readers.map(lambda ws: busclient.close_code(ws, timeout=20), sockets))
    assert codes == [1001] * CLIENTS
    assert server.wait_exit(30) == 0
    log = server.log()
    drained = [int(pid) for pid in re.findall(r"draining gevent process (\d+)", log)]
    assert len(drained) == 2
    # The second was asked to stop only once the first had gone.
    first_gone = log.index(f"gevent process {drained[0]} stopped")
    assert first_gone < log.index(f"draining gevent process {drained[1]}")


def test_reload_starts_new_workers_then_drains_the_old_ones(two_workers):
    server = two_workers
    old = set(gevent_pids(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(gevent_pids(server)) == 2 and not old & set(gevent_pids(server)), 30,
               message="two new gevent workers and none of the old")
    log = server.log()
    assert sorted(int(pid) for pid in re.findall(r"draining gevent process (\d+)", log)) == sorted(old)
    ws = busclient.connect(server.longpolling_port)
    try:
        busclient.subscribe(ws, ["room"])
    finally:
        ws.close()


def test_presence_holds_when_a_users_tabs_are_on_different_workers(two_workers, module_conn):
    server = two_workers
    watcher_sid = create_session(module_conn, 501, 5010, [])
    sid = create_session(module_conn, 502, 5020, [])
    module_conn.commit()
    watcher = busclient.connect(server.longpolling_port, sid=watcher_sid)
    busclient.subscribe(watcher, ["odoo-presence-res.partner_5020"], last=10**9)
    tabs = {}        # gevent worker pid -> the user's tab served there
    others = []
    try:
        while len(tabs) < 2:
            ws = busclient.connect(server.longpolling_port, sid=sid)
            pid = serving_process(ws.sock, gevent_pids(server))
            assert pid is not None, "no gevent worker holds the tab's connection"
            if pid in tabs:
                others.append(ws)
            else:
                tabs[pid] = ws
        for ws in others:
            ws.close()                  # the extra tabs of one worker go before the test begins
        busclient.check_presence_across_processes(watcher, list(tabs.values()), module_conn, 502, 5020)
    finally:
        for ws in [*tabs.values(), *others, watcher]:
            ws.close()
