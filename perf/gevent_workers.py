"""Benchmark: the same rtbus-bench drill against gevent_workers = 1, 2... (and nodes = 1, 2...)
in one run.

For each count it starts a throwaway PostgreSQL cluster (fsync off) and a fresh
``rtbus-server --workers=1 --gevent-workers=N``, runs ``rtbus-bench`` with the given
drill arguments and ``--server-pid`` (so the server CPU and RSS are those of every
gevent worker, summed), stops both, and prints one line per count (p50/p99 of the
hold stage, deliveries/s, server CPU per delivery, lost/duplicated) and, with
--json, the bench reports. With ``--nodes-counts 1,2 --nginx`` it also compares one node
with two on the same database, both behind a real nginx (the test suite's rendering of
conf/nginx.conf); the server figures are then those of the first node only.

    .venv/bin/python perf/gevent_workers.py --workers-counts 1,2 -- \\
        -n 3000 --rate 50 --duration 20 --ramp-rate 500

Run it under /work/heavy.lock on a shared machine; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtbus.db.cluster import Cluster  # noqa: E402

sys.path.insert(0, str(ROOT / "perf"))
from cpu_watch import CpuWatch, load_average  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
READY = re.compile(r"evented service \(longpolling\) running on [\d.]+:(\d+)")
MASTER = re.compile(r"HTTP on [\d.]+:(\d+) with \d+ workers, longpolling on [\d.]+:(\d+)")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what}")


def start_node(env: dict, count: int, log_path: pathlib.Path) -> tuple[subprocess.Popen, int, int]:
    """Start one rtbus-server with `count` gevent workers; return (process, HTTP port, longpolling port)."""
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [str(BIN / "rtbus-server"), "--workers=1", "--max-cron-threads=0", "--http-port=0",
             "--gevent-port=0", f"--gevent-workers={count}", "--gevent-max-connections=12000",
             "--longpolling-max-polls=6000"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    found = wait_for(lambda: MASTER.search(log_path.read_text()), 30, "the master")
    wait_for(lambda: len(READY.findall(log_path.read_text())) >= count, 60, f"{count} gevent workers")
    return server, int(found[1]), int(found[2])


def stop_node(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)


def run_one(count: int, drill: list[str], base: pathlib.Path, nodes: int = 1, nginx: bool = False,
            run: int = 0, nginx_workers: int = 1) -> dict:
    """The drill against one node with `count` gevent workers, or (`nginx`, or `nodes` > 1)
    through a real nginx balancing `nodes` such nodes (server figures: the first node's)."""
    name = f"{nodes}x{count}-{run}"
    cluster = Cluster(base / f"pg{name}", fast=True, tcp=True)
    cluster.init()
    cluster.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTBUS_", "PG"))}
    env.update(RTBUS_DB_HOST="127.0.0.1", RTBUS_DB_PORT=str(cluster.port), RTBUS_DB_USER=cluster.superuser,
               RTBUS_DB_NAME="bench", RTBUS_PUBLIC_CHANNELS="bench*")
    servers, proxy = [], None
    try:
        cluster.create_database("bench")
        started = [start_node(env, count, base / f"server{name}-{n}.log") for n in range(nodes)]
        servers = [server for server, _http, _lp in started]
        port = started[0][2]
        if nginx or nodes > 1:
            proxy = _nginx(base / f"nginx{name}", [h for _s, h, _l in started], [lp for _s, _h, lp in started],
                           nginx_workers)
            port = proxy.port
        dsn = f"host=127.0.0.1 port={cluster.port} user={cluster.superuser} dbname=bench"
        watch = CpuWatch()
        for n, server in enumerate(servers):
            watch.add_node(f"node{n}", server.pid)
        watch.add_tree("postgres", cluster.pid())
        if proxy is not None:
            watch.add_tree("nginx", proxy.proc.pid)
        load_before = load_average()
        bench = subprocess.Popen(
            [str(BIN / "rtbus-bench"), f"http://127.0.0.1:{port}", "--dsn", dsn, "--imbus-db", "bench",
             "--server-pid", str(servers[0].pid), "--server-log", str(base / f"server{name}-0.log"),
             "--json", *drill],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watch.add_process("bench", bench.pid)
        watch.start()
        windows = {}
        errors = threading.Thread(target=_stage_windows, args=(bench.stderr, windows), daemon=True)
        errors.start()
        out, _ = bench.communicate(timeout=900)
        errors.join(5)
        watch.stop()
        if not out.strip():
            raise SystemExit(f"rtbus-bench printed no report: {windows.get('tail', '')[-2000:]}")
        report = json.loads(out)
        report["perf"] = {"load_before": load_before, "load_after": load_average(),
                          "cpu_percent": {stage: watch.usage(*span) for stage, span in windows.items()
                                          if stage != "tail"},
                          "windows": {stage: round(span[1] - span[0], 2) for stage, span in windows.items()
                                      if stage != "tail"}}
        return report
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers:
            stop_node(server)
        cluster.destroy()


PROGRESS = re.compile(r"^\[(\w+)\]\s+([\d.]+)s")


def _stage_windows(stream, windows: dict) -> None:
    """Read the bench's progress lines: {stage: (start, last line)} on the monotonic clock
    (a stage's start is its first line's time less the seconds it says), and the last
    lines of anything else under "tail"."""
    tail = []
    for line in stream:
        found = PROGRESS.match(line)
        now = time.monotonic()
        if found:
            stage = found[1]
            start = windows.get(stage, (now - float(found[2]), now))[0]
            windows[stage] = (start, now)
        else:
            tail.append(line)
            del tail[:-40]
    windows["tail"] = "".join(tail)


def _nginx(directory: pathlib.Path, http_ports: list[int], longpolling_ports: list[int], workers: int = 1):
    """The test suite's real nginx (conf/nginx.conf rendered for loopback) over these nodes."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "ops"))
    from ops_helpers import Nginx, nginx_binary

    binary = nginx_binary()
    if binary is None:
        raise SystemExit("--nodes above 1 needs nginx installed")
    directory.mkdir()
    proxy = Nginx(binary, str(directory), http_ports, longpolling_ports)
    with open(proxy.conf) as f:
        conf = f.read()
    # The tests' 256 connections are far too few for a drill: two per proxied websocket.
    conf = conf.replace("events { worker_connections 256; }",
                        "worker_rlimit_nofile 65535;\nevents { worker_connections 30000; }")
    # One line per connection at `info` would be a cost of its own at 10,000 websockets.
    conf = conf.replace("worker_processes 1;", f"worker_processes {workers};").replace(" info;", " warn;")
    with open(proxy.conf, "w") as f:
        f.write(conf)
    # The sample's per-client limits (256 connections, 10 handshakes/s) are for browsers;
    # here one address stands for every client.
    site_path = pathlib.Path(directory) / "rtbus-site.conf"
    site = re.sub(r"\n\s*limit_(conn|req) (rtbus_per_client|zone=rtbus_handshakes)[^;]*;", "",
                  site_path.read_text())
    site_path.write_text(site)
    proxy.start()
    return proxy


def summary(label: str, report: dict) -> str:
    """One line for the hold stage: latency, rates, where the CPU went (% of one core over
    the stage, from CpuWatch), lost and duplicated, the load average around the run."""
    stages = {stage["stage"]: stage for stage in report.get("stages", [])}
    name = "hold" if "hold" in stages else next(iter(stages), "")
    hold = stages.get(name, {})
    latency = hold.get("latency_ms") or {}
    perf = report.get("perf", {})
    cpu = perf.get("cpu_percent", {}).get(name, {})
    window = perf.get("windows", {}).get(name)
    gevent = sum(value for key, value in cpu.items() if "/gevent" in key)
    deliveries = hold.get("deliveries") or 0
    per_delivery = (f"{gevent / 100 * window / deliveries * 1e6:.1f} us" if deliveries and window
                    else "?")
    p99 = latency.get("p99")
    parts = " ".join(f"{key} {value:.0f}%" for key, value in cpu.items())
    connections = next((stage["connections"] for stage in report.get("stages", []) if stage.get("connections")), {})
    opened = f"{connections.get('websockets_open')}/{connections.get('websockets_attempted')} websockets; "
    return (f"{label}: {opened}{name} p50 {latency.get('p50')} ms p99 {p99 and round(p99, 1)} ms; "
            f"published {hold.get('publish_per_s')}/s (publish p50 "
            f"{(hold.get('publish_ms') or {}).get('p50')} ms); deliveries/s "
            f"{hold.get('deliveries_per_s')}; gevent CPU {gevent:.0f}% ({per_delivery}/delivery); "
            f"lost {hold.get('lost')} dup {hold.get('duplicated')} closes {hold.get('closes')} "
            f"errors {hold.get('errors')} pool errors {hold.get('pool_errors_in_log')}; "
            f"CPU: {parts}; load {perf.get('load_before')} -> {perf.get('load_after')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers-counts", default="1,2")
    parser.add_argument("--nodes-counts", default="1",
                        help="nodes per run, e.g. 1,2 (above 1: a real nginx balances them)")
    parser.add_argument("--nginx", action="store_true", help="through nginx even with one node")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes")
    parser.add_argument("--json", action="store_true", help="print the bench reports too")
    parser.add_argument("drill", nargs=argparse.REMAINDER, help="rtbus-bench arguments (after --)")
    args = parser.parse_args()
    drill = [arg for arg in args.drill if arg != "--"]
    base = pathlib.Path(tempfile.mkdtemp(prefix="rtbus-scale-", dir="/tmp"))
    os.chmod(base, 0o755)
    reports = {}
    try:
        runs = [(int(n), int(c)) for n in args.nodes_counts.split(",")
                for c in args.workers_counts.split(",")]
        for run, (nodes, count) in enumerate(runs):
            label = f"#{run + 1} nodes={nodes} gevent_workers={count}"
            reports[label] = run_one(count, drill, base, nodes, args.nginx, run, args.nginx_workers)
            print(summary(label, reports[label]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
