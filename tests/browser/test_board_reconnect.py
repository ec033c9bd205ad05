"""The shared worker through a crash of the gevent process, and a server from a newer release."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from board import established_connections, event_names, open_board, shown_count, wait_shown, \
    wait_state, wait_subscribed
from serverproc import is_alive, wait_until

pytestmark = pytest.mark.timeout(150)


def test_killing_the_gevent_process_reconnects_every_tab_and_shows_the_missed_notification_once(
        context, board_server, publish):
    tabs = [open_board(context, board_server.base_url) for _ in range(3)]
    for tab in tabs:
        wait_subscribed(tab, "demo.lobby")
    before = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "before the crash"})
    for tab in tabs:
        wait_shown(tab, before)

    (gevent_pid,) = board_server.children_titled("rtbus: gevent")
    os.kill(gevent_pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(gevent_pid), 10, message="the killed gevent process to be gone")
    for tab in tabs:
        tab.wait_for_function("() => window.rtbusDemo.events.some(e => e.name === 'reconnecting')")
    during = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "during the outage"})

    wait_until(lambda: [pid for pid in board_server.children_titled("rtbus: gevent") if pid != gevent_pid],
               30, message="the master to respawn the gevent process")
    for tab in tabs:
        wait_state(tab, "connected", timeout=40_000)
        wait_shown(tab, during)
    after = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "after the crash"})
    for tab in tabs:
        wait_shown(tab, after)
        assert shown_count(tab, during) == 1
        assert shown_count(tab, before) == 1
        names = event_names(tab)
        assert names.index("disconnect") < names.index("reconnecting") < names.index("reconnect")
        assert "outdated" not in names   # the rows were still there: nothing was lost
    assert established_connections(board_server.longpolling_port) == 1


def test_a_page_from_an_older_release_is_told_to_reload(context, board_server):
    """The server answers a worker of another version with close 1000 OUTDATED_VERSION.

    The page is rewritten on its way to the browser, as a page cached before an
    upgrade would be: the server itself is the production one.
    """
    def stale_page(route):
        response = route.fetch()
        html = re.sub(r'data-worker-version="[^"]*"', 'data-worker-version="18.0-7"', response.text())
        route.fulfill(response=response, body=html)

    context.route(f"{board_server.base_url}/", stale_page)
    page = context.new_page()
    page.goto(board_server.base_url)
    wait_state(page, "outdated")
    banner = page.locator("#outdated")
    banner.wait_for(state="visible")
    assert "out of date" in banner.inner_text()
    assert page.locator("#reload").is_visible()
    names = event_names(page)
    assert names.count("outdated") == 1 and "reconnecting" not in names
    # Stopped for good: no further attempt however long the page stays open.
    page.wait_for_timeout(2500)
    assert "reconnecting" not in event_names(page)
    assert page.evaluate("window.rtbusDemo.state") == "outdated"


def test_a_revoked_session_waits_for_a_new_one_then_reconnects(context, board_server, publish,
                                                               pg_cluster, board_db):
    from rtbus.session import revoke_session

    page = open_board(context, board_server.base_url)
    wait_subscribed(page, "demo.lobby")
    (sid,) = [c["value"] for c in context.cookies() if c["name"] == "session_id"]
    conn = pg_cluster.connect(board_db)
    try:
        revoke_session(conn, sid)
        conn.commit()
        # The revocation reaches the server's session cache through NOTIFY rtbus_session
        # in this database. Published with the SQL function, the next notification's
        # NOTIFY imbus goes out after it on the same dispatcher link, so it is heard
        # after the revocation: its dispatch re-checks the session, close 4001, and no
        # reconnection on its own.
        with conn.cursor() as cr:
            cr.execute("SELECT rtbus_sendone('\"demo.lobby\"', 'demo/message', %s::jsonb)",
                       (json.dumps({"channel": "demo.lobby", "text": "after the logout"}),))
            (unseen,) = cr.fetchone()
        conn.commit()
    finally:
        conn.close()
    wait_state(page, "waiting_session")
    page.locator("#expired").wait_for(state="visible")
    assert shown_count(page, unseen) == 0
    assert "reconnecting" not in event_names(page)

    page.click("#new-session")
    wait_state(page, "connected")
    assert [c["value"] for c in context.cookies() if c["name"] == "session_id"] != [sid]
    again = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "signed in again"})
    wait_shown(page, again)
