"""A visitor without any session, as a public page or kiosk runs it: our browser client on a
custom string channel, against a server in its default configuration (Odoo 19's channel rule,
no demo routes, no session cookie anywhere)."""

from __future__ import annotations

import pytest

import pgcluster
from board import open_board, wait_shown, wait_subscribed
from serverproc import ServerProcess, clean_environ

from ops_helpers import free_port

pytestmark = pytest.mark.timeout(120)

CHANNEL = "kiosk.hall-3f9c2a"


@pytest.fixture(scope="module")
def default_server(pg_cluster, board_db, tmp_path_factory):
    directory = tmp_path_factory.mktemp("public-board")
    env = clean_environ()
    env.update(pgcluster.env_for(pg_cluster), RTBUS_DB_NAME=board_db)
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", f"--http-port={free_port()}",
                            f"--gevent-port={free_port()}", f"--runtime-dir={directory / 'run'}"],
                           env, str(directory / "server.log"))
    server.start()
    server.base_url = f"http://127.0.0.1:{server.http_port}"
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["websocket", "longpolling"])
def test_a_page_without_a_session_receives_its_own_channel(context, default_server, publish, transport):
    page = open_board(context, f"{default_server.base_url}/?transport={transport}")
    assert page.locator("body").get_attribute("data-demo-mode") == "off"
    page.evaluate("channel => window.rtbusDemo.bus.addChannel(channel)", CHANNEL)
    wait_subscribed(page, CHANNEL)
    notification_id = publish(CHANNEL, "kiosk/update", {"text": f"doors open ({transport})"})
    wait_shown(page, notification_id)
    assert f"doors open ({transport})" in page.locator(f"#feed li[data-id='{notification_id}']").inner_text()
    assert context.cookies() == []           # nobody ever gave this browser a session
