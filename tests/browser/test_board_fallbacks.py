"""The client where the preferred path is missing: no SharedWorker, long-polling across the
two origins of a deployment without proxy, and one origin behind a real nginx."""

from __future__ import annotations

import pytest

from board import established_connections, open_board, wait_shown, wait_subscribed
from conftest import start_board_server
from serverproc import wait_until

pytestmark = pytest.mark.timeout(120)

NO_SHARED_WORKER = "delete window.SharedWorker;"


def test_without_shared_worker_each_tab_runs_a_dedicated_worker(context, board_server, publish):
    context.add_init_script(NO_SHARED_WORKER)
    tabs = [open_board(context, board_server.base_url) for _ in range(2)]
    for tab in tabs:
        wait_subscribed(tab, "demo.lobby")
        assert tab.locator("#fact-worker").inner_text() == "dedicated worker"
    assert established_connections(board_server.longpolling_port) == 2
    notification_id = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "one per tab"})
    for tab in tabs:
        wait_shown(tab, notification_id)


def test_long_polling_across_the_two_origins(context, board_server, publish):
    """The page is on the HTTP port, the long-poll on the longpolling port: the gevent
    process lets that one page read the answers (CORS with credentials), and the demo
    session cookie goes along."""
    page = open_board(context, f"{board_server.base_url}/?transport=longpolling")
    assert page.locator("#fact-transport").inner_text() == "longpolling"
    assert "long-polling" in page.locator("#conn-text").inner_text()
    wait_subscribed(page, "demo.lobby")
    first = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "by long-poll"})
    wait_shown(page, first)
    # A channel added while a poll is held: the poll is replaced by one with the new list.
    page.locator(".chip[data-channel='demo.random']").click()
    wait_subscribed(page, "demo.random")
    second = publish("demo.random", "demo/message", {"channel": "demo.random", "text": "new channel"})
    wait_shown(page, second)
    assert page.locator(f"#feed li[data-id='{first}']").count() == 1


@pytest.fixture(scope="module")
def proxied_board(pg_cluster, board_db, tmp_path_factory, request):
    nginx_helpers = pytest.importorskip("ops_helpers")
    binary = nginx_helpers.nginx_binary()    # present: skipped at collection otherwise
    base = tmp_path_factory.mktemp("proxied-board")
    server = start_board_server(pg_cluster, board_db, base, "--proxy-mode")
    proxy = nginx_helpers.Nginx(binary, str(tmp_path_factory.mktemp("board-nginx")), server.http_port,
                                server.longpolling_port)
    proxy.start()
    yield server, proxy
    proxy.stop()
    server.stop()


def test_behind_nginx_the_page_and_the_bus_share_one_origin(context, proxied_board, publish):
    server, proxy = proxied_board
    origin = f"http://127.0.0.1:{proxy.port}"
    tabs = [open_board(context, origin) for _ in range(2)]
    assert tabs[0].locator("body").get_attribute("data-bus-url") == ""
    assert tabs[0].locator("#fact-url").inner_text() == origin
    for tab in tabs:
        wait_subscribed(tab, "demo.lobby")
    assert established_connections(server.longpolling_port) == 1
    notification_id = publish("demo.lobby", "demo/message", {"channel": "demo.lobby", "text": "via nginx"})
    for tab in tabs:
        wait_shown(tab, notification_id)
    for tab in tabs:
        tab.close()
    # nginx logs a websocket when it ends: the shared worker's, once the last tab closed.
    wait_until(lambda: "GET /websocket?version=" in proxy.access_log(), 15,
               message="nginx to log the websocket it proxied")
