"""Exactly-once delivery on real servers and a real PostgreSQL, with no time window.

A transaction held open for long while others publish: connected websockets, a
long-poll loop and clients reconnecting with `last` on another server all get every
notification once, the others without delay, the late one within 2 s of its commit.
Also: TRUNCATE ... RESTART IDENTITY with clients connected, a 30,000-row catch-up in
bounded frames, and PostgreSQL restarted while a transaction was open.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

import busclient
import pgcluster
from http_client import post_json
from rtbus.bus.channels import encode
from serverproc import ServerProcess, clean_environ
from waiting import wait_metric, wait_until

ROOM = "room"


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


# The long-poll loop's last poll, with nothing more to come, ends at this timeout.
LONGPOLLING_TIMEOUT = 2

# How long the late transaction stays open while others publish. No server window bounds
# it from below: the long-poll loop resumes with its `last` after every publish (0.5 s),
# the idle fetch (30 s) never runs while NOTIFYs come, and Odoo's 50 s `last = 0` window
# is the slow test's. It spans the rejoin at the tenth publish (5 s) and, with margin,
# the ~10 s after which rtbus before issue 14 lost a late row.
HOLD = 15


@pytest.fixture(scope="module")
def servers(module_servers):
    """Two servers on the same database: two nodes."""
    return [module_servers(name=f"node{n}", RTBUS_PUBLIC_CHANNELS=ROOM,
                           RTBUS_LONGPOLLING_TIMEOUT=str(LONGPOLLING_TIMEOUT))
            for n in (1, 2)]


@pytest.fixture(scope="module")
def db(module_conn):
    module_conn.autocommit = True
    return module_conn


def sendone(conn, payload) -> int:
    """Publish on ROOM from SQL in `conn`'s transaction (NOTIFY at commit); the new id."""
    with conn.cursor() as cur:
        cur.execute("SELECT rtbus_sendone(%s, 'n', %s)", ('"room"', json.dumps(payload)))
        return cur.fetchone()[0]


def poll(port, last, timeout=10.0):
    status, _, body = post_json(port, "/longpolling/poll", {
        "jsonrpc": "2.0", "method": "call", "id": 1,
        "params": {"channels": [ROOM], "last": last}}, timeout=timeout)
    assert status == 200, body
    return body["result"]


class PollLoop(threading.Thread):
    """A long-poll client: polls again with the id of the last notification it got."""

    def __init__(self, port: int, last: int):
        super().__init__(daemon=True)
        self.port, self.last = port, last
        self.received: list[tuple[int, float]] = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for notification in poll(self.port, self.last):
                self.received.append((notification["id"], time.monotonic()))
                self.last = notification["id"]

    @property
    def ids(self):
        return [row_id for row_id, _ in self.received]


class Watcher(threading.Thread):
    """A websocket client reading everything, with arrival times."""

    def __init__(self, ws):
        super().__init__(daemon=True)
        self.ws = ws
        self.received: list[tuple[int, float]] = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for notification in busclient.receive(self.ws, 1, timeout=0.2):
                self.received.append((notification["id"], time.monotonic()))

    @property
    def ids(self):
        return [row_id for row_id, _ in self.received]

    def arrival(self, row_id):
        return next(at for got, at in self.received if got == row_id)


def highest_id(db) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM bus_bus")
        return cur.fetchone()[0]


def held_transaction(servers, db, pg_cluster, bus_db, hold: float):
    first, second = servers
    start = highest_id(db)
    ws = busclient.connect(first.longpolling_port)
    busclient.subscribe(ws, [ROOM], last=start or 1)
    watcher = Watcher(ws)
    watcher.start()
    looper = PollLoop(second.longpolling_port, start)
    looper.start()
    slow = pg_cluster.connect(bus_db)
    late_id = sendone(slow, "late")
    publisher = pg_cluster.connect(bus_db)
    published: dict[int, float] = {}
    rejoiner = rejoined = None
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        row_id = sendone(publisher, "on time")
        publisher.commit()
        published[row_id] = time.monotonic()
        if rejoiner is None and len(published) == 5:
            # A client that leaves and comes back on the other node with its last id.
            rejoiner = busclient.connect(first.longpolling_port)
            busclient.subscribe(rejoiner, [ROOM], last=start or 1)
            got = busclient.receive_ids(rejoiner, list(published))
            rejoiner.close()
        elif rejoiner is not None and rejoined is None and len(published) == 10:
            rejoined = busclient.connect(second.longpolling_port)
            busclient.subscribe(rejoined, [ROOM], last=got[-1])
        time.sleep(0.5)
    slow.commit()
    committed = time.monotonic()
    everything = sorted([*published, late_id])
    wait_until(lambda: set(watcher.ids) >= set(everything) and set(looper.ids) >= set(everything),
               10, message="every notification on the websocket and the long-poll loop")
    again = busclient.receive_ids(rejoined, [row_id for row_id in everything if row_id > got[-1]
                                             or row_id == late_id], timeout=10)
    watcher.stopping.set()
    looper.stopping.set()
    watcher.join(5)
    looper.join(15)
    # Each exactly once, the late one last, within 2 s of its commit; the others on time.
    assert sorted(watcher.ids) == everything and watcher.ids[-1] == late_id
    assert sorted(looper.ids) == everything and looper.ids[-1] == late_id
    assert sorted(got + again) == everything and again[-1] == late_id
    assert busclient.nothing_more(rejoined, 0.3)
    assert watcher.arrival(late_id) - committed < 2.0
    delays = sorted(watcher.arrival(row_id) - at for row_id, at in published.items())
    assert delays[len(delays) // 2] < 0.5 and delays[-1] < 2.0, delays
    for conn in (ws, rejoined):
        conn.close()
    slow.close()
    publisher.close()


def test_a_held_transaction_is_delivered_once_and_delays_nobody(servers, db, pg_cluster, bus_db):
    held_transaction(servers, db, pg_cluster, bus_db, hold=HOLD)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_transaction_held_5_minutes(servers, db, pg_cluster, bus_db):
    held_transaction(servers, db, pg_cluster, bus_db, hold=300)


def test_an_aborted_transaction_leaves_no_hole(servers, db, pg_cluster, bus_db):
    ws = busclient.connect(servers[0].longpolling_port)
    busclient.subscribe(ws, [ROOM], last=highest_id(db) or 1)
    doomed = pg_cluster.connect(bus_db)
    sendone(doomed, "never")
    after = sendone(db, "after")
    doomed.rollback()
    later = sendone(db, "later")
    assert busclient.receive_ids(ws, [after, later]) == [after, later]
    assert busclient.nothing_more(ws, 0.3)
    assert [n["id"] for n in poll(servers[1].longpolling_port, after)] == [later]
    ws.close()
    doomed.close()


def test_thirty_thousand_rows_catch_up_in_bounded_frames(servers, db):
    start = highest_id(db)
    with db.cursor() as cur:
        cur.execute("INSERT INTO bus_bus (channel, message)"
                    " SELECT %s, '{\"type\":\"n\",\"payload\":\"' || repeat('x', 1200) || '\"}'"
                    " FROM generate_series(1, 30000)", (encode(db.info.dbname, ROOM),))
        cur.execute("NOTIFY imbus")
    ws = busclient.connect(servers[0].longpolling_port, timeout=30)
    busclient.subscribe(ws, [ROOM], last=start + 1, wait=False)
    ids, frames = [], []
    while len(ids) < 29_999:
        ws.settimeout(30)
        raw = ws.recv()
        batch = json.loads(raw)
        frames.append((len(batch), len(raw)))
        ids.extend(n["id"] for n in batch)
    assert ids == list(range(start + 2, start + 30_001))
    assert max(count for count, _ in frames) <= 1000 and max(size for _, size in frames) <= 1 << 20
    assert len(frames) >= 36            # 1,250-byte rows: the byte bound cuts the pages
    assert busclient.nothing_more(ws, 0.3)
    ws.close()
    # A long-poll and a peek continue from where the client is, one bounded page at a time.
    page = poll(servers[1].longpolling_port, start + 1)
    assert 0 < len(page) <= 1000 and page[0]["id"] == start + 2
    following = poll(servers[1].longpolling_port, page[-1]["id"])
    assert following[0]["id"] == page[-1]["id"] + 1


def test_truncate_restart_identity_with_clients_connected(servers, db, pg_cluster, bus_db):
    before = sendone(db, "before")
    ws = busclient.connect(servers[0].longpolling_port)
    busclient.subscribe(ws, [ROOM], last=before)
    with db.cursor() as cur:
        cur.execute("TRUNCATE bus_bus RESTART IDENTITY")
    fresh = [sendone(db, "fresh") for _ in range(3)]
    assert fresh == [1, 2, 3]
    assert busclient.receive_ids(ws, fresh) == fresh
    wait_metric(servers[0].http_port, "rtbus_dispatch_regressions_total", 1)
    more = sendone(db, "more")
    assert busclient.receive_ids(ws, [more]) == [more]
    # A long-poll resuming with the old, now too high, id gets the last 50 s (Odoo's rule).
    assert [n["id"] for n in poll(servers[1].longpolling_port, before)] == [*fresh, more]
    assert [n["id"] for n in poll(servers[1].longpolling_port, fresh[0])] == [*fresh[1:], more]
    assert busclient.nothing_more(ws, 0.3)
    ws.close()


def test_postgresql_restarted_while_a_transaction_was_open(crash_cluster, tmp_path):
    dbname = pgcluster.create_schema_db(crash_cluster)
    env = clean_environ()
    env.update(pgcluster.env_for(crash_cluster), RTBUS_DB_NAME=dbname, RTBUS_PUBLIC_CHANNELS=ROOM)
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0",
                            "--gevent-port=0"], env, str(tmp_path / "server.log")).start()
    try:
        app = crash_cluster.connect(dbname)
        app.autocommit = True
        first = sendone(app, "first")
        ws = busclient.connect(server.longpolling_port)
        busclient.subscribe(ws, [ROOM], last=first)
        open_tx = crash_cluster.connect(dbname)
        sendone(open_tx, "lost with the crash")
        on_time = sendone(app, "on time")
        assert busclient.receive_ids(ws, [on_time]) == [on_time]
        app.close()
        crash_cluster.restart()
        wait_metric(server.http_port, "rtbus_listen_reconnects_total", 1, timeout=30)
        app = crash_cluster.connect(dbname)
        app.autocommit = True
        after = [sendone(app, "after") for _ in range(2)]
        got = busclient.receive_ids(ws, after, timeout=10) if busclient.barrier(ws) else None
        if got is None:        # the server closed the websocket: resume on a new one
            ws = busclient.connect(server.longpolling_port)
            busclient.subscribe(ws, [ROOM], last=on_time)
            got = busclient.receive_ids(ws, after, timeout=10)
        assert got == after
        assert busclient.nothing_more(ws, 0.3)
        assert [n["id"] for n in poll(server.longpolling_port, on_time)] == after
        ws.close()
        app.close()
    finally:
        server.stop()
