"""rtbus-bench abuse against a real server, with small numbers: every attack is answered by
the edge's rules, health and the legitimate subscribers hold, the numbers are printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RTBUS_BENCH = os.path.join(os.path.dirname(sys.executable), "rtbus-bench")


@pytest.fixture(scope="module")
def server(module_servers):
    # Short deadlines so that a short drill sees them pass; a small receive budget so that
    # unfinished messages meet it.
    return module_servers("--limit-time-header=2", "--limit-time-body=2",
                          "--http-max-body-size=1048576", name="abuse",
                          RTBUS_WEBSOCKET_RECEIVE_BUDGET="200000")


@pytest.mark.timeout(120)
def test_the_abuse_drill_reports_refusals_and_healthy_numbers(server, pg_cluster, module_db):
    from serverproc import clean_environ

    dsn = f"host=127.0.0.1 port={pg_cluster.port} user={pg_cluster.superuser} dbname={module_db}"
    result = subprocess.run(
        [RTBUS_BENCH, "abuse", "--port", str(server.longpolling_port), "--db", module_db, "--dsn", dsn,
         "--server-pid", str(server.pid), "--duration", "6", "--stalled", "100", "--subscribers", "5",
         "--sid-rate", "50", "--json"],
        env=clean_environ(), capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["health"]["failed"] == 0 and report["health"]["max_s"] < 1.0, report["health"]
    assert report["subscribers"]["published"] >= 10 and report["subscribers"]["p99_s"] < 1.0
    attacks = report["attacks"]
    assert attacks["slowloris"].get("408", 0) >= 100, attacks["slowloris"]
    assert set(attacks["heads"]) == {"431"}, attacks["heads"]
    assert set(attacks["bodies"]) == {"413"}, attacks["bodies"]
    assert set(attacks["sids"]) <= {"error 100", "503"}, attacks["sids"]
    assert set(attacks["frames: 2 MiB frame"]) == {"1009"}, attacks
    assert attacks["frames: unfinished message"].get("1013", 0) >= 1, attacks

    counters = report["server_counters"]
    assert counters["rtbus_edge_deadlines_passed_total{head}"] >= 100
    assert counters["rtbus_edge_refusals_total{head_too_large}"] >= 1
    assert report["rss_mib"]["after"] is not None
    assert "health:" in result.stdout and "server RSS:" in result.stdout
