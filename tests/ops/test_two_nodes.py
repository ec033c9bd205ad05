"""Two rtbus-server nodes on one PostgreSQL database behind one real nginx upstream.

The nodes share nothing but the database: each has its own ports, runtime directory,
master, workers and LISTEN connections. nginx balances websockets over both.
"""

from __future__ import annotations

import os
import signal

import pytest

import busclient
import pgcluster
from buspublish import Publish
from ops_helpers import API_KEY, Nginx, ops_env, publish_over_http, rpc
from rtbus.session import create_session
from serverproc import ServerProcess, wait_until
from waiting import metric

pytestmark = pytest.mark.timeout(120)

CLIENTS = 8
JOBS = ("bus_gc", "session_gc", "presence_gc")


@pytest.fixture(scope="module")
def nodes_db(pg_cluster):
    name = pgcluster.create_schema_db(pg_cluster, "rtbus_nodes")
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def nodes(pg_cluster, nodes_db, tmp_path_factory):
    """Two prefork nodes (1 HTTP worker, 1 gevent worker, 1 cron worker each), started together."""
    started = []
    for name in ("a", "b"):
        base = tmp_path_factory.mktemp(f"node-{name}")
        started.append(ServerProcess(
            ["--workers=1", "--max-cron-threads=1", "--http-port=0", "--gevent-port=0", "--proxy-mode",
             f"--runtime-dir={base / 'run'}"],
            ops_env(pg_cluster, nodes_db), str(base / "server.log")))
    try:
        for node in started:
            node.start(wait=False)
        for node in started:
            node.wait_ready()
        yield started
    finally:
        for node in started:
            node.stop()


@pytest.fixture(scope="module")
def balancer(nginx_bin, nodes, tmp_path_factory):
    proxy = Nginx(nginx_bin, str(tmp_path_factory.mktemp("nginx-nodes")),
                  [node.http_port for node in nodes], [node.longpolling_port for node in nodes])
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def nodes_conn(pg_cluster, nodes_db):
    conn = pg_cluster.connect(nodes_db)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def nodes_publish(pg_cluster, nodes_db):
    publisher = Publish(pg_cluster, nodes_db)
    yield publisher
    publisher.close()


def websockets_on(node) -> float:
    return metric(node.longpolling_port, "rtbus_websockets_open", kinds=("gevent",))


def connect_spread(balancer, nodes, channel: str) -> list:
    """CLIENTS websockets through nginx, subscribed to `channel`, on both nodes."""
    sockets = [busclient.connect(balancer.port) for _ in range(CLIENTS)]
    for ws in sockets:
        busclient.subscribe(ws, [channel])
    counts = wait_until(lambda: (lambda c: c if sum(c) == CLIENTS else None)(
        [websockets_on(node) for node in nodes]), 15, message="every websocket counted by a node")
    assert all(count > 0 for count in counts), f"nginx did not balance: {counts}"
    return sockets


def test_cron_jobs_run_once_across_the_cluster(pg_cluster, nodes_db, nodes):
    """Both nodes' cron workers find every job due at start: each job runs once, on one node."""
    def jobs_done():
        logs = "".join(node.log() for node in nodes)
        counts = {job: logs.count(f"cron job {job} done on {nodes_db}") for job in JOBS}
        return counts if all(counts.values()) else None

    wait_until(jobs_done, 20, message="every cron job run once")
    # Both cron workers have looked at the schedule and hold no connection: no run is pending.
    wait_until(lambda: all(metric(node.http_port, "rtbus_pool_connects_total", kinds=("cron",)) >= 1
                           and metric(node.http_port, "rtbus_pool_connections_in_use", kinds=("cron",)) == 0
                           for node in nodes), 15, message="both cron workers done with their first look")
    conn = pg_cluster.connect(nodes_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM rtbus_cron WHERE nextcall <= (now() at time zone 'utc') "
                        "OR running_pid IS NOT NULL")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()
    assert jobs_done() == {job: 1 for job in JOBS}


def test_a_publish_on_either_node_reaches_subscribers_on_both(balancer, nodes):
    sockets = connect_spread(balancer, nodes, "room")
    try:
        ids = [publish_over_http(node.http_port, "room", "nodes.test", {"from": n})
               for n, node in enumerate(nodes)]
        for ws in sockets:
            assert busclient.receive_ids(ws, ids, timeout=10) == ids
    finally:
        for ws in sockets:
            ws.close()


def test_a_logout_on_one_node_closes_the_sessions_websockets_on_both(nodes, nodes_conn):
    sid = create_session(nodes_conn, 701, 7010, [])
    nodes_conn.commit()
    sockets = [busclient.connect(node.longpolling_port, sid=sid) for node in nodes]
    try:
        for ws in sockets:
            busclient.subscribe(ws, ["room"])
            busclient.barrier(ws)
        status, answer = rpc(nodes[0].http_port, "/bus/session/revoke", {"sid": sid},
                             headers={"Authorization": f"Bearer {API_KEY}"})
        assert status == 200 and "result" in answer, answer
        # Node a's own worker revoked it; node b heard the NOTIFY rtbus_session.
        assert [busclient.close_code(ws, timeout=5) for ws in sockets] == [4001, 4001]
    finally:
        for ws in sockets:
            ws.close()


def test_presence_holds_when_a_users_tabs_are_on_different_nodes(nodes, nodes_conn):
    watcher_sid = create_session(nodes_conn, 711, 7110, [])
    sid = create_session(nodes_conn, 712, 7120, [])
    nodes_conn.commit()
    watcher = busclient.connect(nodes[0].longpolling_port, sid=watcher_sid)
    tabs = []
    try:
        busclient.subscribe(watcher, ["odoo-presence-res.partner_7120"], last=10**9)
        tabs = [busclient.connect(node.longpolling_port, sid=sid) for node in nodes]
        # Node b loses the user's only tab it had; node a writes the status back.
        busclient.check_presence_across_processes(watcher, tabs[::-1], nodes_conn, 712, 7120)
    finally:
        for ws in [*tabs, watcher]:
            ws.close()


# Last: it kills node a for good (the nodes are module-scoped).
def test_clients_of_a_killed_node_resume_on_the_other_and_lose_nothing(balancer, nodes, nodes_publish):
    sockets = connect_spread(balancer, nodes, "lobby")
    first = nodes_publish("lobby", "before", count=3)
    for ws in sockets:
        assert busclient.receive_ids(ws, first, timeout=10) == first
    victim, survivor = nodes
    os.killpg(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    during = nodes_publish("lobby", "during", count=3)
    resumed = []
    for ws in sockets:
        if busclient.still_connected(ws):
            assert busclient.receive_ids(ws, during, timeout=10) == during
            ws.close()
            continue
        ws.close()
        fresh = busclient.connect(balancer.port)      # nginx passes on to the node that answers
        busclient.subscribe(fresh, ["lobby"], last=first[-1])
        resumed.append(fresh)
    try:
        assert resumed, "the killed node had none of the clients"
        assert websockets_on(survivor) >= len(resumed)
        after = nodes_publish("lobby", "after", count=2)
        for ws in resumed:
            assert busclient.receive_ids(ws, during + after, timeout=10) == during + after
            assert busclient.nothing_more(ws, wait=0.2)
    finally:
        for ws in resumed:
            ws.close()
