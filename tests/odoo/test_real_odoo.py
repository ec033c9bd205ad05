"""rtbus in front of a real Odoo 19 (opt-in: `make test-odoo ODOO_SRC=<tree>`).

The rtbus_bridge addon is installed with mail in a throwaway database of the test
cluster; Odoo's HTTP server runs threaded on a loopback port, and rtbus serves that
database with its authorization proxy pointed at Odoo. Then, over real HTTP and a real
websocket (no browser): a user signs in through Odoo, subscribes through rtbus, hears a
Discuss message a second user posts through Odoo, shows as online in Odoo through a
forwarded update_presence, and is closed 4001 when signing out.

Runs when RTBUS_TEST_ODOO_SRC names an Odoo 19 source tree and RTBUS_TEST_ODOO_PYTHON a
Python that has its requirements; skipped otherwise (the make target sets both, and
fails when no tree is given).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time

import pytest

import busclient
import pgcluster
from waiting import metric, wait_until

ODOO_SRC = os.environ.get("RTBUS_TEST_ODOO_SRC")
ODOO_PYTHON = os.environ.get("RTBUS_TEST_ODOO_PYTHON")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "real-odoo-bridge-secret"
ODOO_ROLE = "rtbus_odoo"       # Odoo refuses to run as "postgres"

pytestmark = [
    pytest.mark.skipif(not (ODOO_SRC and ODOO_PYTHON),
                       reason="no Odoo 19 tree: set RTBUS_TEST_ODOO_SRC and RTBUS_TEST_ODOO_PYTHON "
                              "(make test-odoo ODOO_SRC=<tree>)"),
    pytest.mark.timeout(1200),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Odoo:
    """odoo-bin on `cluster`, with a configuration file of its own in `directory`."""

    def __init__(self, cluster, directory: str, dbname: str):
        self.dbname = dbname
        self.port = free_port()
        self.directory = directory
        self.conf = os.path.join(directory, "odoo.conf")
        self.log_path = os.path.join(directory, "odoo.log")
        addons = ",".join([os.path.join(ODOO_SRC, "odoo", "addons"), os.path.join(ODOO_SRC, "addons"),
                           os.path.join(REPO, "odoo_addon")])
        with open(self.conf, "w") as f:
            f.write("[options]\n"
                    f"addons_path = {addons}\n"
                    f"data_dir = {os.path.join(directory, 'data')}\n"
                    f"db_host = 127.0.0.1\ndb_port = {cluster.port}\ndb_user = {ODOO_ROLE}\n"
                    f"dbfilter = ^{dbname}$\nlist_db = False\n"
                    f"http_interface = 127.0.0.1\nhttp_port = {self.port}\n"
                    f"gevent_port = {free_port()}\nworkers = 0\nmax_cron_threads = 0\n"
                    f"logfile = {self.log_path}\nlog_level = warn\n"
                    f"rtbus_bridge_secret = {SECRET}\n")
        self.proc: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [ODOO_PYTHON, os.path.join(ODOO_SRC, "odoo-bin"), "-c", self.conf, "-d", self.dbname,
                *args]

    def install(self) -> None:
        done = subprocess.run(self.command("-i", "rtbus_bridge,mail", "--stop-after-init"),
                              capture_output=True, text=True, timeout=1100)
        assert done.returncode == 0, f"installing the addon failed:\n{done.stderr[-4000:]}{self.log()}"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

        def up():
            assert self.proc.poll() is None, f"Odoo exited ({self.proc.returncode}):\n{self.log()}"
            try:
                return self.get("/web/health")[0] == 200
            except OSError:
                return False
        wait_until(up, 120, message="Odoo answering /web/health")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def get(self, path: str):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def rpc(self, path: str, params: dict, sid: str | None = None):
        """A JSON-RPC call; returns (result, the session_id the answer set or None)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json"}
        if sid:
            headers["Cookie"] = f"session_id={sid}"
        try:
            conn.request("POST", path, json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                                                   "params": params}), headers)
            response = conn.getresponse()
            body = json.loads(response.read())
            cookie = response.getheader("Set-Cookie") or ""
        finally:
            conn.close()
        assert "error" not in body, f"{path}: {body['error']}"
        new_sid = None
        if cookie.startswith("session_id="):
            new_sid = cookie.split(";", 1)[0].split("=", 1)[1]
        return body.get("result"), new_sid       # Odoo leaves a None result out

    def login(self, login: str, password: str) -> tuple[str, dict]:
        info, sid = self.rpc("/web/session/authenticate",
                             {"db": self.dbname, "login": login, "password": password})
        assert sid, "Odoo answered the login without a session cookie"
        return sid, info

    def call(self, sid: str, model: str, method: str, *args, **kwargs):
        result, _ = self.rpc(f"/web/dataset/call_kw/{model}/{method}",
                             {"model": model, "method": method, "args": list(args),
                              "kwargs": kwargs}, sid)
        return result


@pytest.fixture(scope="module")
def odoo(pg_cluster, tmp_path_factory):
    conn = pg_cluster.connect("postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ODOO_ROLE,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE ROLE {ODOO_ROLE} LOGIN CREATEDB")
    conn.close()
    dbname = pgcluster.unique_name()
    server = Odoo(pg_cluster, str(tmp_path_factory.mktemp("odoo")), dbname)
    server.install()
    server.start()
    yield server
    server.stop()
    pg_cluster.drop_database(dbname)


@pytest.fixture(scope="module")
def rtbus(module_servers, odoo):
    return module_servers("--max-cron-threads=0", name="rtbus-real-odoo", db=odoo.dbname,
                          RTBUS_AUTH_PROXY_URL=f"http://127.0.0.1:{odoo.port}/rtbus_bridge",
                          RTBUS_AUTH_PROXY_SECRET=SECRET, RTBUS_IMBUS_DB_NAME="postgres")


def test_discuss_message_presence_and_logout_through_rtbus(odoo, rtbus):
    admin_sid, admin = odoo.login("admin", "admin")
    admin_partner = admin["partner_id"]
    bob_uid = odoo.call(admin_sid, "res.users", "create",
                        {"name": "Bob", "login": "bob", "password": "bob-secret-password-1"})
    bob_sid, bob = odoo.login("bob", "bob-secret-password-1")
    assert bob["uid"] == bob_uid
    channel_id = odoo.call(admin_sid, "discuss.channel", "create", {
        "name": "rtbus", "channel_type": "channel",
        "channel_member_ids": [[0, 0, {"partner_id": admin_partner}],
                               [0, 0, {"partner_id": bob["partner_id"]}]]})

    calls_before = metric(rtbus.longpolling_port, "rtbus_auth_proxy_calls_total")
    ws = busclient.connect(rtbus.longpolling_port, sid=admin_sid)
    busclient.subscribe(ws, [])
    assert metric(rtbus.longpolling_port, "rtbus_auth_proxy_calls_total") == calls_before + 1

    sent = time.monotonic()
    odoo.call(bob_sid, "discuss.channel", "message_post", channel_id,
              body="hello through rtbus", message_type="comment", subtype_xmlid="mail.mt_comment")

    def the_message_arrived():
        return any("hello through rtbus" in json.dumps(notification)
                   for notification in busclient.receive(ws, 1, timeout=0.5))

    wait_until(the_message_arrived, 15, message="Bob's message delivered to admin by rtbus")
    latency = time.monotonic() - sent
    print(f"\nDiscuss message: posted through Odoo -> received through rtbus in {latency:.3f} s")

    # Presence travels to Odoo: the update_presence event, forwarded in a batch to
    # /rtbus_bridge/events, becomes mail.presence's status.
    def admin_status():
        return odoo.call(bob_sid, "res.partner", "read", [admin_partner], ["im_status"])[0]["im_status"]

    assert admin_status() == "offline"
    busclient.send_event(ws, "update_presence", {"inactivity_period": 0})
    wait_until(lambda: admin_status() == "online", 15, message="admin online in Odoo")

    odoo.rpc("/web/session/destroy", {}, admin_sid)       # ir.http._post_logout NOTIFYs rtbus
    assert busclient.close_code(ws, timeout=5) == 4001
    again = busclient.connect(rtbus.longpolling_port, sid=admin_sid)
    busclient.subscribe(again, [], wait=False)
    assert busclient.close_code(again, timeout=10) == 4001


def test_a_guest_known_by_its_cookie_hears_its_discuss_group(odoo, rtbus):
    """A visitor without a session but with Odoo's guest cookie (dgid, forwarded by
    auth_proxy_cookies): Odoo lists the guest's channels, and a message reaches it."""
    admin_sid, admin = odoo.login("admin", "admin")
    guest_id = odoo.call(admin_sid, "mail.guest", "create", {"name": "Visitor"})
    token = odoo.call(admin_sid, "mail.guest", "read", [guest_id], ["access_token"])[0]["access_token"]
    group_id = odoo.call(admin_sid, "discuss.channel", "create", {
        "name": "with a guest", "channel_type": "group",
        "channel_member_ids": [[0, 0, {"partner_id": admin["partner_id"]}],
                               [0, 0, {"guest_id": guest_id}]]})
    ws = busclient.connect(rtbus.longpolling_port, cookie=f"dgid={guest_id}|{token}")
    busclient.subscribe(ws, [])
    odoo.call(admin_sid, "discuss.channel", "message_post", group_id,
              body="hello, guest", message_type="comment", subtype_xmlid="mail.mt_comment")

    def the_message_arrived():
        return any("hello, guest" in json.dumps(notification)
                   for notification in busclient.receive(ws, 1, timeout=0.5))

    wait_until(the_message_arrived, 15, message="the admin's message delivered to the guest")
    ws.close()
