"""conf/nginx-odoo.conf for real: nginx sends /websocket and /longpolling to rtbus (whose
authorization proxy asks a small real application standing in for Odoo) and the rest to
that application, as docs/odoo.md deploys rtbus in front of Odoo 19."""

from __future__ import annotations

import json
import os
import socket

import pytest

import busclient
from authapp import SECRET, AuthApp
from ops_helpers import CLIENT_ADDRESS, REPO, Nginx, loopback, replace_once, request

pytestmark = pytest.mark.timeout(120)

SAMPLE = os.path.join(REPO, "conf", "nginx-odoo.conf")
SID = "odoo-browser-session-0001"


def render(sample: str, *, odoo_port: int, rtbus_port: int, port: int, redirect_port: int,
           logs: str) -> str:
    site = replace_once(sample, "server 127.0.0.1:8069;", f"server 127.0.0.1:{odoo_port};")
    site = replace_once(site, "server 127.0.0.1:8172;", f"server 127.0.0.1:{rtbus_port};")
    return loopback(site, port=port, redirect_port=redirect_port, logs=logs, log_name="odoo")


@pytest.fixture(scope="module")
def odoo():
    application = AuthApp()
    application.sessions[SID] = (2, 3)
    yield application
    application.stop()


@pytest.fixture(scope="module")
def rtbus(module_servers, odoo):
    return module_servers("--proxy-mode", name="rtbus-for-odoo", RTBUS_AUTH_PROXY_URL=odoo.url,
                          RTBUS_AUTH_PROXY_SECRET=SECRET)


@pytest.fixture(scope="module")
def site(nginx_bin, odoo, rtbus, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("nginx-odoo"))
    sample = open(SAMPLE).read()
    proxy = Nginx(nginx_bin, directory, render=lambda port, redirect: render(
        sample, odoo_port=odoo.port, rtbus_port=rtbus.longpolling_port, port=port,
        redirect_port=redirect, logs=directory))
    checked = proxy.test_config()
    assert checked.returncode == 0, f"nginx -t refused the rendered sample:\n{checked.stderr}"
    proxy.start()
    yield proxy
    proxy.stop()


def test_the_web_client_is_served_by_odoo(site):
    status, _, body = request(site.port, "GET", "/odoo/discuss")
    assert status == 200 and json.loads(body)["served_by"] == "application"


def test_a_websocket_through_nginx_hears_what_odoo_grants(site, odoo, publish):
    sock = socket.create_connection(("127.0.0.1", site.port), timeout=5,
                                    source_address=(CLIENT_ADDRESS, 0))
    ws = busclient.connect(site.port, sid=SID, socket=sock)
    busclient.subscribe(ws, ["discuss.channel_1", "secret.x"])
    refused = publish.one("secret.x")
    granted = publish.one("discuss.channel_1")
    partner = publish.one(("res.partner", 3))
    assert busclient.received_before(ws, partner) == {granted, partner}, refused
    ws.close()
    assert odoo.calls[SID] == 1


def test_the_bridge_routes_are_not_reachable_through_nginx(site, odoo):
    status, _, _ = request(site.port, "POST", "/rtbus_bridge/subscribe", {"channels": []})
    assert status == 403
    assert odoo.bad_signatures == 0          # refused by nginx, never reached the application
