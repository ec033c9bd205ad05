"""Helpers of the operations tests: the shared server's environment, and a real nginx
running the loopback rendering of conf/nginx.conf."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess

import pytest

import pgcluster
from serverproc import clean_environ, wait_until
from system_programs import nginx_binary  # noqa: F401  (re-exported for the ops tests)

API_KEY = "ops-test-key"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX_SAMPLE = os.path.join(REPO, "conf", "nginx.conf")
CLIENT_ADDRESS = "127.0.0.3"   # tests connect from here, so the proxy's own 127.0.0.1 differs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ops_env(pg_cluster, dbname: str, **extra) -> dict[str, str]:
    env = clean_environ()
    env.update(pgcluster.env_for(pg_cluster), RTBUS_DB_NAME=dbname, RTBUS_PUBLIC_CHANNELS="room,lobby",
               RTBUS_BUS_API_KEY=API_KEY, **extra)
    return env


# -- requests --------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body=None, headers=None, source=CLIENT_ADDRESS,
            timeout: float = 10.0):
    """One request to nginx from `source`; returns (status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def rpc(port: int, path: str, params: dict, headers=None, timeout: float = 10.0):
    status, _headers, body = request(port, "POST", path, {"jsonrpc": "2.0", "method": "call", "id": 1,
                                                        "params": params}, headers, timeout=timeout)
    return status, json.loads(body)


def publish_over_http(port: int, channel, notification_type, payload) -> int:
    status, answer = rpc(port, "/bus/publish", {"channel": channel, "type": notification_type,
                                                "payload": payload},
                         headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200, answer
    (notification_id,) = answer["result"]["ids"]
    return notification_id


# -- nginx ----------------------------------------------------------------------------------


class Nginx:
    """A real nginx running the loopback rendering of conf/nginx.conf, or of another
    sample: `render(port, redirect_port)` returns the site to run instead.

    `http_port` and `longpolling_port` are one node's ports, or lists of several
    nodes' (each list is then one upstream balancing over them).
    """

    def __init__(self, binary: str, directory: str, http_port=0, longpolling_port=0,
                 render=None):
        self.binary = binary
        self.directory = directory
        self.port = free_port()          # stands for 443 (without TLS)
        self.redirect_port = free_port()  # stands for 80
        if render is not None:
            self.site = render(self.port, self.redirect_port)
        else:
            self.site = render_site(open(NGINX_SAMPLE).read(), http_port=http_port,
                                    longpolling_port=longpolling_port, port=self.port,
                                    redirect_port=self.redirect_port, logs=directory,
                                    monitoring=["127.0.0.1"])
        self.conf = os.path.join(directory, "nginx.conf")
        with open(os.path.join(directory, "rtbus-site.conf"), "w") as f:
            f.write(self.site)
        with open(self.conf, "w") as f:
            f.write(main_conf(directory))
        self.proc: subprocess.Popen | None = None

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "-t", "-c", self.conf, "-p", self.directory],
                              capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", self.conf, "-p", self.directory],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

        def listening():
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited ({self.proc.returncode}): {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 15, message="nginx listening")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()   # nginx's fast shutdown
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)

    def access_log(self) -> str:
        with open(os.path.join(self.directory, "rtbus.access.log"), errors="replace") as f:
            return f.read()


def replace_once(text: str, old: str, new: str) -> str:
    """Replace `old`, which must occur exactly once: the sample and this rendering stay in step."""
    count = text.count(old)
    assert count == 1, f"conf/nginx.conf: expected {old!r} once, found it {count} times"
    return text.replace(old, new)


def _upstream_servers(ports) -> str:
    ports = [ports] if isinstance(ports, int) else list(ports)
    return "\n    ".join(f"server 127.0.0.1:{port};" for port in ports)


def render_site(sample: str, *, http_port, longpolling_port, port: int, redirect_port: int,
                logs: str, monitoring: list[str]) -> str:
    """The loopback variant of the sample: ports, no TLS, logs in `logs`, the given monitoring hosts."""
    site = replace_once(sample, "server 127.0.0.1:8069;", _upstream_servers(http_port))
    site = replace_once(site, "server 127.0.0.1:8072;", _upstream_servers(longpolling_port))
    site = replace_once(site, "        allow 192.0.2.10;\n",
                         "".join(f"        allow {address};\n" for address in monitoring))
    return loopback(site, port=port, redirect_port=redirect_port, logs=logs, log_name="rtbus")


def loopback(site: str, *, port: int, redirect_port: int, logs: str, log_name: str) -> str:
    """A site sample's listeners moved to loopback ports, without TLS, logging into `logs`
    (as rtbus.access.log, which Nginx.access_log reads); `log_name` names the sample's logs."""
    site = replace_once(site, "    listen 80;\n    listen [::]:80;\n", f"    listen 127.0.0.1:{redirect_port};\n")
    site = replace_once(site, "    listen 443 ssl;\n    listen [::]:443 ssl;\n", f"    listen 127.0.0.1:{port};\n")
    site = re.sub(r"\n    ssl_[a-z_]+ [^;]+;", "", site)
    site = replace_once(site, f"/var/log/nginx/{log_name}.access.log", os.path.join(logs, "rtbus.access.log"))
    site = replace_once(site, f"/var/log/nginx/{log_name}.error.log", os.path.join(logs, "rtbus.error.log"))
    assert "ssl" not in site.replace("ssi off", ""), "TLS directives left in the loopback rendering"
    return site


def main_conf(directory: str) -> str:
    """A minimal nginx.conf in `directory` (pid, temp paths, logs) including the site."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {os.path.join(directory, kind)};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}daemon off;\nworker_processes 1;\npid {os.path.join(directory, 'nginx.pid')};\n"
            f"error_log {os.path.join(directory, 'error.log')} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {os.path.join(directory, 'access.log')};\n"
            f"{temp}\n"
            f"    include {os.path.join(directory, 'rtbus-site.conf')};\n"
            "}\n")
