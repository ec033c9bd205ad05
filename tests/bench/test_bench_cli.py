"""rtbus-bench against a real rtbus-server, with tiny numbers: the report's shape,
nothing lost or duplicated through every publishing path, and one-line usage errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

RTBUS_BENCH = os.path.join(os.path.dirname(sys.executable), "rtbus-bench")
API_KEY = "bench-test-key"
CHANNELS = "bench0,bench1"
# A NOTIFY that reaches the dispatcher while it runs its own fetch can wait for the
# next wake-up (at worst its 30 s idle fetch): settle longer than that, so that such
# a delay shows as latency, never as a lost notification.
SETTLE = "35"


def run_bench(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    from serverproc import clean_environ
    return subprocess.run([RTBUS_BENCH, *args], env=clean_environ(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def bench_server(start_server, server_env, module_db):
    env = dict(server_env, RTBUS_DB_NAME=module_db, RTBUS_PUBLIC_CHANNELS=CHANNELS,
               RTBUS_BUS_API_KEY=API_KEY)
    return start_server("--workers=1", "--max-cron-threads=0", env=env, name="bench")


@pytest.fixture
def dsn(pg_cluster, module_db) -> str:
    return f"host=127.0.0.1 port={pg_cluster.port} user={pg_cluster.superuser} dbname={module_db}"


def _common(server, *extra: str) -> list[str]:
    return [f"http://127.0.0.1:{server.longpolling_port}", "-n", "20", "-m", "5", "-k", "2",
            "--channel-prefix", "bench", "--settle", SETTLE, "--max-seconds", "140", *extra]


@pytest.mark.timeout(180)
def test_drill_json_reports_every_stage_with_nothing_lost(bench_server, dsn):
    result = run_bench(*_common(bench_server, "--drill", "--publish", "sql", "--dsn", dsn,
                                "--notifications", "50", "--rate", "100",
                                "--spike-notifications", "50", "--storm-seconds", "1",
                                "--server-pid", str(bench_server.pid),
                                "--server-log", bench_server.log_path, "--json", "--quiet"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [s["stage"] for s in report["stages"]] == ["ramp", "hold", "spike", "storm"]
    assert report["verdict"] == {"ok": True, "problems": []}
    assert report["server"]["title"].startswith("rtbus: gevent")
    for stage in report["stages"]:
        assert stage["lost"] == 0 and stage["duplicated"] == 0, stage
        assert stage["deliveries"] == stage["expected_deliveries"] > 0, stage
        assert stage["subscribers"] == {"websockets": 20, "longpolls": 5}
        assert stage["closes"] == {} and stage["errors"] == {}, stage
        assert set(stage["latency_ms"]) == {"count", "p50", "p90", "p99", "max", "mean"}
        assert stage["latency_ms"]["count"] == stage["deliveries"]
        assert stage["pool_errors_in_log"] == 0
        assert stage["server"]["rss_kb_after"] > 0
        assert stage["bench_cpu_percent"] is not None
        # The server's CPU counts its PostgreSQL backends (the dispatcher's at least).
        postgres = stage["server"]["postgres"]
        assert postgres["status"] == "measured" and postgres["backends"] >= 1, stage["server"]
        assert stage["server"]["cpu_us_per_delivery"] >= stage["server"]["process_cpu_us_per_delivery"]
    ramp, hold, spike, storm = report["stages"]
    assert ramp["connections"]["websockets_open"] == 20
    assert ramp["connections"]["longpolls_held"] == 5
    assert ramp["connections"]["handshake_ms"]["count"] == 20
    assert ramp["wake"]["all_woken"] is True
    assert ramp["memory"]["connections"] == 25
    # Each notification goes to one channel, i.e. to half the clients.
    assert hold["published"] == 50 and hold["expected_deliveries"] == 50 * 25 // 2
    assert spike["published"] == 50
    assert storm["reconnect"]["websockets"] == 20
    assert storm["caught_up_s"]["not_caught_up"] == 0
    assert storm["caught_up_s"]["caught_up"] == 25


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", ["python", "http"])
def test_python_and_http_paths_text_report(bench_server, dsn, path):
    publish = (["--publish", "python", "--dsn", dsn] if path == "python" else
               ["--publish", "http", "--publish-url", f"http://127.0.0.1:{bench_server.http_port}",
                "--api-key", API_KEY])
    result = run_bench(*_common(bench_server, *publish, "--notifications", "50", "--rate", "0",
                                "--server-pid", str(bench_server.pid)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"({path} publishing, 20 websockets, 5 long-polls, 2 channel(s)" in result.stdout
    assert "verdict: OK: nothing lost, nothing duplicated" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("ramp ", "hold "))]
    assert [row[0] for row in rows] == ["ramp", "hold"]
    # lost and duplicated columns
    assert all(row[12:14] == ["0", "0"] for row in rows), result.stdout
    assert "[hold]" in result.stderr      # the progress line
    # Its PostgreSQL backends are found through --dsn; the http path gives none.
    expected = "PostgreSQL backends" if path == "python" else "PostgreSQL backends not watched"
    assert "hold: server CPU " in result.stdout and expected in result.stdout, result.stdout


@pytest.mark.timeout(180)
def test_deflate_clients_read_compressed_batches_and_count_wire_bytes(bench_server, dsn):
    def hold(*extra):
        result = run_bench(f"http://127.0.0.1:{bench_server.longpolling_port}", "-n", "10", "-m", "0",
                           "--channel-prefix", "bench0", "--settle", SETTLE, "--max-seconds", "140",
                           "--publish", "sql", "--dsn", dsn, "--notifications", "30", "--rate", "0",
                           "--payload-bytes", "1500", "--json", "--quiet", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["verdict"]["ok"] and report["options"]["deflate"] == bool(extra)
        stage = report["stages"][1]
        assert stage["deliveries"] == stage["expected_deliveries"] == 300 and stage["lost"] == 0
        return stage["websocket_bytes_per_delivery"]

    plain, compressed = hold(), hold("--deflate")
    assert plain > 1500 and compressed < plain * 0.75, (plain, compressed)


def test_unreachable_target_fails_without_hanging():
    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_bench(f"http://127.0.0.1:{port}", "-n", "3", "--publish", "http",
                       "--api-key", "k", "--quiet", timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("rtbus-bench: error: the first publish through http failed")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("args, sentence", [
    ([], "the following arguments are required: target"),
    (["https://127.0.0.1:1"], "TLS is not supported"),
    (["http://127.0.0.1:1", "--websockets", "-1"], "--websockets must be 0 or more"),
    (["http://127.0.0.1:1", "-n", "0", "-m", "0"], "nothing to measure"),
    (["http://127.0.0.1:1", "--stages", "hold"], "--stages must start with ramp"),
    (["http://127.0.0.1:1", "--stages", "ramp,party"], "unknown stage 'party'"),
    (["http://127.0.0.1:1", "--publish", "http"], "needs --api-key"),
    (["http://127.0.0.1:1", "--publish", "carrier-pigeon"], "invalid choice"),
    (["http://127.0.0.1:1", "--rate", "fast"], "invalid float value"),
])
def test_bad_arguments_exit_2_with_one_line(args, sentence):
    result = run_bench(*args, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtbus-bench: error: "), result.stderr
    assert sentence in lines[0]
