"""Benchmark: the same rtbus-bench drill against gevent_workers = 1, 2... in one run.

For each count it starts a throwaway PostgreSQL cluster (fsync off) and a fresh
``rtbus-server --workers=1 --gevent-workers=N``, runs ``rtbus-bench`` with the given
drill arguments and ``--server-pid`` (so the server CPU and RSS are those of every
gevent worker, summed), stops both, and prints one line per count (p50/p99 of the
hold stage, deliveries/s, server CPU per delivery, lost/duplicated) and, with
--json, the bench reports.

    .venv/bin/python bench/gevent_workers.py --workers-counts 1,2 -- \\
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
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtbus.db.cluster import Cluster  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
READY = re.compile(r"evented service \(longpolling\) running on [\d.]+:(\d+)")
MASTER = re.compile(r"longpolling on [\d.]+:(\d+) with (\d+) gevent workers")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what}")


def run_one(count: int, drill: list[str], base: pathlib.Path) -> dict:
    cluster = Cluster(base / f"pg{count}", fast=True, tcp=True)
    cluster.init()
    cluster.start()
    log_path = base / f"server{count}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTBUS_", "PG"))}
    env.update(RTBUS_DB_HOST="127.0.0.1", RTBUS_DB_PORT=str(cluster.port), RTBUS_DB_USER=cluster.superuser,
               RTBUS_DB_NAME="bench", RTBUS_PUBLIC_CHANNELS="bench*")
    server = None
    try:
        cluster.create_database("bench")
        with open(log_path, "ab") as log:
            server = subprocess.Popen(
                [str(BIN / "rtbus-server"), "--workers=1", "--max-cron-threads=0", "--http-port=0",
                 "--gevent-port=0", f"--gevent-workers={count}", "--gevent-max-connections=12000",
                 "--longpolling-max-polls=6000"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        port = int(wait_for(lambda: MASTER.search(log_path.read_text()), 30, "the master")[1])
        wait_for(lambda: len(READY.findall(log_path.read_text())) >= count, 60, f"{count} gevent workers")
        dsn = f"host=127.0.0.1 port={cluster.port} user={cluster.superuser} dbname=bench"
        bench = subprocess.run(
            [str(BIN / "rtbus-bench"), f"http://127.0.0.1:{port}", "--dsn", dsn, "--imbus-db", "bench",
             "--server-pid", str(server.pid), "--server-log", str(log_path), "--json", "-q", *drill],
            env=env, capture_output=True, text=True, timeout=900)
        if not bench.stdout.strip():
            raise SystemExit(f"rtbus-bench printed no report: {bench.stderr[-2000:]}")
        return json.loads(bench.stdout)
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
        cluster.destroy()


def summary(count: int, report: dict) -> str:
    stages = {stage["stage"]: stage for stage in report.get("stages", [])}
    hold = stages.get("hold") or next(iter(stages.values()), {})
    latency = hold.get("latency_ms") or {}
    server = hold.get("server") or {}
    deliveries = hold.get("deliveries") or 0
    seconds = hold.get("seconds") or 0
    cpu = server.get("cpu_percent")
    per_delivery = (f"{cpu / 100 * seconds / deliveries * 1e6:.1f} us" if cpu and deliveries and seconds
                    else "?")
    p99 = latency.get("p99")
    return (f"gevent_workers={count}: p50 {latency.get('p50')} ms p99 {p99 and round(p99, 1)} ms "
            f"deliveries/s {hold.get('deliveries_per_s')} server CPU {cpu}% "
            f"({per_delivery}/delivery) lost {hold.get('lost')} dup {hold.get('duplicated')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers-counts", default="1,2")
    parser.add_argument("--json", action="store_true", help="print the bench reports too")
    parser.add_argument("drill", nargs=argparse.REMAINDER, help="rtbus-bench arguments (after --)")
    args = parser.parse_args()
    drill = [arg for arg in args.drill if arg != "--"]
    base = pathlib.Path(tempfile.mkdtemp(prefix="rtbus-scale-", dir="/tmp"))
    os.chmod(base, 0o755)
    reports = {}
    try:
        for count in (int(c) for c in args.workers_counts.split(",")):
            reports[count] = run_one(count, drill, base)
            print(summary(count, reports[count]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
