"""Tabs of one browser share one websocket, held by the shared worker."""

from __future__ import annotations

import pytest

from board import established_connections, event_names, open_board, shown_count, wait_shown, \
    wait_subscribed
from serverproc import wait_until

pytestmark = pytest.mark.timeout(120)


def test_three_tabs_share_one_websocket_and_each_shows_a_notification(context, board_server, publish):
    tabs = [open_board(context, board_server.base_url) for _ in range(3)]
    for tab in tabs:
        wait_subscribed(tab, "demo.lobby")
    assert tabs[2].locator("#fact-worker").inner_text() == "shared worker"
    assert tabs[2].locator("#fact-tabs").inner_text() == "3"
    assert established_connections(board_server.longpolling_port) == 1

    notification_id = publish("demo.lobby", "demo/message",
                              {"channel": "demo.lobby", "text": "hello, three tabs",
                               "from": {"name": "a test", "color": "#333"}})
    for tab in tabs:
        wait_shown(tab, notification_id)
        assert shown_count(tab, notification_id) == 1
        assert "hello, three tabs" in tab.locator(f"#feed li[data-id='{notification_id}']").inner_text()
    # Only the first tab's worker connected; the others joined it.
    assert [names.count("connect") for names in map(event_names, tabs)] == [1, 0, 0]
    assert established_connections(board_server.longpolling_port) == 1


def test_a_channel_one_tab_adds_reaches_that_tab_only_through_the_shared_subscription(
        context, board_server, publish):
    first, second = (open_board(context, board_server.base_url) for _ in range(2))
    second.locator(".chip[data-channel='demo.builds']").click()
    wait_subscribed(first, "demo.builds")   # the union is the worker's, so every tab sees it
    notification_id = publish("demo.builds", "demo/message", {"channel": "demo.builds", "text": "build 42 passed"})
    wait_shown(second, notification_id)
    second.locator(".chip[data-channel='demo.builds']").click()
    first.wait_for_function("() => !document.getElementById('subscribed').textContent.includes('demo.builds')")
    assert established_connections(board_server.longpolling_port) == 1


def test_closing_the_tab_that_started_the_worker_keeps_the_connection(context, board_server, publish):
    creator = open_board(context, board_server.base_url)
    others = [open_board(context, board_server.base_url) for _ in range(2)]
    for tab in others:
        wait_subscribed(tab, "demo.lobby")
    creator.close()
    others[0].wait_for_function("() => document.getElementById('fact-tabs').textContent === '2'")

    notification_id = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "still here"})
    for tab in others:
        wait_shown(tab, notification_id)
        assert tab.evaluate("window.rtbusDemo.state") == "connected"
        assert "disconnect" not in event_names(tab)
    wait_until(lambda: established_connections(board_server.longpolling_port) == 1, 5,
               message="one websocket after the creator tab closed")
