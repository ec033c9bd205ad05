"""Authorization follows the session: open websockets and held long-polls of a session that
changes are re-authorized (or closed 4001) within a second, idle ones included."""

from __future__ import annotations

import json
import threading
import time

import pytest

import busclient
from busclient import close_code, received_before
from http_client import post_json
from rtbus.session import create_session, revoke_session, set_groups
from waiting import metric, wait_metric, wait_until

pytestmark = pytest.mark.timeout(90)

FOLLOW_TIME = 1.0         # the bound: re-authorized or closed within a second


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="follow")


@pytest.fixture(scope="module")
def db(module_conn):
    set_groups(module_conn, {100: ("Employee", []), 300: ("Admin", [])})
    module_conn.commit()
    return module_conn


def session(db, uid, partner_id, groups=()) -> str:
    sid = create_session(db, uid, partner_id, list(groups))
    db.commit()
    return sid


def set_session_groups(db, sid: str, groups) -> None:
    """What an application does when it removes a user from a group: a direct UPDATE
    (migration 0004's trigger announces it)."""
    with db.cursor() as cur:
        cur.execute("UPDATE rtbus_session SET group_ids = %s WHERE sid = %s", (list(groups), sid))
    db.commit()


def test_an_idle_websocket_of_a_revoked_session_closes_4001_within_a_second(server, db):
    sid = session(db, 1, 11)
    ws = busclient.connect(server.longpolling_port, sid=sid)
    try:
        busclient.subscribe(ws, [])
        revoke_session(db, sid)
        db.commit()
        started = time.monotonic()
        code = close_code(ws, timeout=5)
        elapsed = time.monotonic() - started
    finally:
        ws.close()
    assert code == 4001
    assert elapsed < FOLLOW_TIME, elapsed


def test_every_socket_of_a_logged_out_user_closes_and_others_stay(server, db, publish):
    mine = [busclient.connect(server.longpolling_port, sid=session(db, 2, 12)) for _ in range(3)]
    other = busclient.connect(server.longpolling_port, sid=session(db, 3, 13))
    try:
        for ws in (*mine, other):
            busclient.subscribe(ws, [])
        with db.cursor() as cur:
            cur.execute("SELECT rtbus_session_revoke_user(2)")
        db.commit()
        assert [close_code(ws, timeout=FOLLOW_TIME + 1) for ws in mine] == [4001] * 3
        marker = publish.one(("res.partner", 13))
        assert marker in received_before(other, marker)
    finally:
        for ws in (*mine, other):
            ws.close()


def test_a_group_removed_drops_its_channel_and_a_group_added_joins(server, db, publish):
    port = server.longpolling_port
    sid = session(db, 4, 14, [100])
    ws = busclient.connect(port, sid=sid)
    try:
        busclient.subscribe(ws, [])
        before = metric(port, "rtbus_websocket_reauthorizations_total")
        set_session_groups(db, sid, [300])
        wait_metric(port, "rtbus_websocket_reauthorizations_total", before + 1, timeout=FOLLOW_TIME)
        assert busclient.barrier(ws)
        removed = publish.one(("res.groups", 100))
        added = publish.one(("res.groups", 300))
        got = received_before(ws, added)
    finally:
        ws.close()
    assert removed not in got


def test_a_change_that_does_not_touch_the_grants_keeps_the_subscription(server, db, publish):
    port = server.longpolling_port
    sid = session(db, 5, 15, [100])
    ws = busclient.connect(port, sid=sid)
    try:
        busclient.subscribe(ws, [])
        before = metric(port, "rtbus_websocket_reauthorizations_total")
        with db.cursor() as cur:       # the session is extended: announced, nothing to re-authorize
            cur.execute("UPDATE rtbus_session SET expires = expires + interval '1 hour' WHERE sid = %s",
                        (sid,))
        db.commit()
        marker = publish.one(("res.groups", 100))
        assert marker in received_before(ws, marker)
        assert busclient.barrier(ws)
    finally:
        ws.close()
    assert metric(port, "rtbus_websocket_reauthorizations_total") == before


def held_poll(port: int, sid: str, last: int):
    box = {}
    body = {"jsonrpc": "2.0", "method": "call", "id": 1, "params": {"channels": [], "last": last}}

    def run():
        box["answer"] = post_json(port, "/longpolling/poll", body, {"Cookie": f"session_id={sid}"},
                                  timeout=40)
        box["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize("change", ["revoke", "groups"])
def test_a_held_long_poll_ends_within_a_second_when_its_session_changes(server, db, publish, change):
    port = server.longpolling_port
    sid = session(db, 6, 16, [100])
    last = publish.one("broadcast")
    held = metric(port, "rtbus_longpolls_open")
    thread, box = held_poll(port, sid, last)
    wait_until(lambda: metric(port, "rtbus_longpolls_open") > held, 10, message="the poll held")
    if change == "revoke":
        revoke_session(db, sid)
        db.commit()
    else:
        set_session_groups(db, sid, [300])
    changed = time.monotonic()
    thread.join(10)
    status, _, answer = box["answer"]
    assert box["at"] - changed < FOLLOW_TIME
    assert status == 200
    if change == "revoke":
        assert answer["error"]["code"] == 100, json.dumps(answer)[:300]
    else:
        assert answer["result"] == []
