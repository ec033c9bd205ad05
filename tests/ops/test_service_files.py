"""conf/rtbus.service and conf/nginx.conf: what an operator copies must say what the docs promise."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys

import pytest

from ops_helpers import NGINX_SAMPLE, REPO
from rtbus.config import Config

UNIT = os.path.join(REPO, "conf", "rtbus.service")


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, interpolation=None)
    parser.optionxform = str      # systemd keys are case-sensitive
    with open(UNIT) as f:
        parser.read_file(f)
    return parser


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_stops_gracefully_and_reloads_with_hup():
    service = _unit()["Service"]
    assert service["Type"] == "simple"
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecReload"].split() == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["Restart"] == "on-failure"
    graceful = Config.defaults().graceful_timeout
    assert _seconds(service["TimeoutStopSec"]) > graceful
    assert "rtbus-server" in service["ExecStart"] and "--runtime-dir=/run/rtbus" in service["ExecStart"]
    # The hardening must leave PostgreSQL reachable over TCP and its Unix socket.
    families = service["RestrictAddressFamilies"].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert "PrivateNetwork" not in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's rtbus-server.
    executable = os.path.join(os.path.dirname(sys.executable), "rtbus-server")
    with open(UNIT) as f:
        text = f.read().replace("/opt/rtbus/.venv/bin/rtbus-server", executable)
    unit = tmp_path / "rtbus.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "rtbus.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def _locations(text: str) -> dict[str, str]:
    return {match.group(1): match.group(2)
            for match in re.finditer(r"location\s+(?:= )?(\S+)\s*\{(.*?)\n    \}", text, re.S)}


def test_the_nginx_sample_covers_the_known_pitfalls():
    with open(NGINX_SAMPLE) as f:
        text = f.read()
    locations = _locations(text)
    assert set(locations) == {"/websocket", "/longpolling", "/metrics", "/"}
    assert "ssi off;" in text
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*''\s+close;", text)
    for path, body in locations.items():
        # proxy_set_header is not inherited into a location that sets its own.
        for header in ("X-Forwarded-Host $http_host", "X-Forwarded-For $proxy_add_x_forwarded_for",
                       "X-Forwarded-Proto $scheme"):
            assert f"proxy_set_header {header};" in body, (path, header)
        assert "proxy_http_version 1.1;" in body, path
    websocket = locations["/websocket"]
    assert "proxy_pass http://rtbus_longpolling;" in websocket
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket
    assert "proxy_set_header Connection $connection_upgrade;" in websocket
    assert "proxy_pass http://rtbus_longpolling;" in locations["/longpolling"]
    for path in ("/websocket", "/longpolling"):
        timeout = re.search(r"proxy_read_timeout (\d+)s;", locations[path])
        assert timeout and int(timeout.group(1)) > 60, path   # above the 50 s poll and 40 s ping
    assert "deny all;" in locations["/metrics"]
