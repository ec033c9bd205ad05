"""Presence over real websockets: update_presence, last connection closed, missed presences."""

from __future__ import annotations

import time

import pytest

import busclient
from busclient import barrier, send_event as send, subscribe
from rtbus.session import create_session

AWAY_MS = 31 * 60 * 1000      # past Odoo's 30 min AWAY_TIMER


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="presence")


@pytest.fixture(scope="module")
def db(module_conn):
    return module_conn


def user(db, uid: int) -> str:
    sid = create_session(db, uid, uid * 10, [])
    db.commit()
    return sid


def connect(server, sid=None):
    return busclient.connect(server.longpolling_port, sid=sid)


def presence_rows(pg_cluster, dbname: str, where: str) -> list[tuple]:
    conn = pg_cluster.connect(dbname)
    try:
        with conn.cursor() as cr:
            cr.execute(f"SELECT user_id, status FROM rtbus_presence WHERE {where}")
            return cr.fetchall()
    finally:
        conn.close()


def statuses(ws, partner_id: int, count: int, timeout: float = 5.0) -> list[str]:
    """The im_status values announced for `partner_id`, until `count` arrived or timeout."""
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        ws.settimeout(max(deadline - time.monotonic(), 0.01))
        batch = busclient.receive(ws, 1, timeout=max(deadline - time.monotonic(), 0.01))
        if not batch:
            break
        for notification in batch:
            message = notification["message"]
            if message["type"] == "bus.bus/im_status_updated" and message["payload"]["partner_id"] == partner_id:
                found.append(message["payload"]["im_status"])
    return found


def test_presence_changes_reach_subscribers(server, db):
    watcher = connect(server, user(db, 1))
    subscribe(watcher, ["odoo-presence-res.partner_20"], last=10**9)
    tab = connect(server, user(db, 2))
    try:
        send(tab, "subscribe", {"channels": [], "last": 10**9})
        send(tab, "update_presence", {"inactivity_period": 0})
        assert statuses(watcher, 20, 1) == ["online"]
        send(tab, "update_presence", {"inactivity_period": AWAY_MS})
        assert statuses(watcher, 20, 1) == ["away"]
        send(tab, "update_presence", {"inactivity_period": 1000})
        assert statuses(watcher, 20, 1) == ["online"]
        tab.close()                                   # the user's last connection
        assert statuses(watcher, 20, 1) == ["offline"]
    finally:
        tab.close()
        watcher.close()


def test_many_tabs_of_one_user_go_offline_only_with_the_last(server, db):
    watcher = connect(server, user(db, 3))
    subscribe(watcher, ["odoo-presence-res.partner_40"], last=10**9)
    sid = user(db, 4)
    tabs = [connect(server, sid) for _ in range(3)]
    try:
        for tab in tabs:
            send(tab, "update_presence", {"inactivity_period": 0})
        assert statuses(watcher, 40, 1) == ["online"]
        tabs[0].close()
        tabs[1].close()
        assert statuses(watcher, 40, 1, timeout=1.0) == []      # a tab is still open
        tabs[2].close()
        assert statuses(watcher, 40, 1) == ["offline"]
    finally:
        for tab in tabs:
            tab.close()
        watcher.close()


def test_missed_presence_is_pushed_right_after_subscribing(server, db, pg_cluster, module_db,
                                                             module_publish):
    tab = connect(server, user(db, 5))
    try:
        send(tab, "update_presence", {"inactivity_period": 0})
        barrier(tab)                   # handled: the presence is written (see the next line)
        assert presence_rows(pg_cluster, module_db, "user_id = 5") == [(5, "online")]
        (marker,) = module_publish("nobody-listens", "marker")
        late = connect(server, user(db, 6))
        try:
            # Nothing before the marker is replayed: only the push can bring the presence.
            subscribe(late, ["odoo-presence-res.partner_50"], last=marker, wait=False)
            assert statuses(late, 50, 1) == ["online"]
        finally:
            late.close()
    finally:
        tab.close()


def test_bad_update_presence_is_ignored_and_public_sessions_write_nothing(server, db, pg_cluster, module_db):
    anonymous = connect(server)
    tab = connect(server, user(db, 7))
    try:
        send(anonymous, "update_presence", {"inactivity_period": 0})
        send(tab, "update_presence", {"inactivity_period": "soon"})
        send(tab, "update_presence", [])
        subscribe(tab, ["odoo-presence-res.partner_70"], last=10**9)
        # Every event above was handled (the barriers), and wrote nothing.
        assert barrier(anonymous) and barrier(tab), "a connection closed instead of ignoring"
        assert presence_rows(pg_cluster, module_db, "user_id IN (7) OR user_id IS NULL") == []
    finally:
        anonymous.close()
        tab.close()
