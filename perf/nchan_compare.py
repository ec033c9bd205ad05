"""Side by side: the rtbus-bench workloads of issue 17 against a running rtbus and Nchan.

Starts its own nginx with the Nchan module (`rtbus.bench.nchan`), then for each workload
runs one ``rtbus-bench --compare nchan:URL --json`` (rtbus first, then Nchan), and prints
the table of issue 17: the hold stage's latency, server CPU per delivery (the rtbus
gevent process with its PostgreSQL backends; the nginx worker) and lost notifications,
and from a ramp-only run the memory per websocket and handshakes/s. For one workload,
`rtbus-bench --compare` alone is enough (docs/performance.md).

    python perf/nchan_compare.py --rtbus http://127.0.0.1:8072 --rtbus-pid MASTER_PID \\
        --dsn "host=... dbname=rtbus user=..." --workloads 1000x50,3000x50 --idle 5000

Run it under the machine's benchmark lock; it stops only the nginx it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rtbus.bench.nchan import NchanServer

BENCH = os.path.join(os.path.dirname(sys.executable), "rtbus-bench")


def compared(options, nchan: NchanServer, args: list[str]) -> list[dict]:
    """[(side, report of that run)] of one ``rtbus-bench --compare``; [] without a report."""
    command = [BENCH, options.rtbus, "--server-pid", str(options.rtbus_pid), "--dsn", options.dsn,
               "--compare", f"nchan:{nchan.url}", "--compare-pid", str(nchan.pid),
               "--json", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    try:
        return json.loads(done.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        sys.stderr.write(f"no report from {' '.join(command)}: {done.stderr[-500:]}\n")
        return []


def stage(run: dict, name: str) -> dict:
    return next((s for s in run["report"]["stages"] if s["stage"] == name), {})


def fanout_cell(run: dict) -> str:
    hold = stage(run, "hold")
    latency, server = hold["latency_ms"], hold.get("server") or {}
    return (f"{latency['p50']} / {latency['p99']} ms, {server.get('cpu_us_per_delivery')} µs, "
            f"lost {hold['lost']}")


def idle_cells(run: dict) -> tuple[str, str]:
    ramp = stage(run, "ramp")
    memory, connections = ramp.get("memory") or {}, ramp["connections"]
    return (f"{memory.get('kb_per_connection')} KB",
            f"{connections['handshakes_per_s']}/s (p99 {connections['handshake_ms']['p99']} ms)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rtbus", required=True, help="rtbus longpolling address")
    p.add_argument("--rtbus-pid", type=int, required=True, help="its master (or gevent) pid")
    p.add_argument("--dsn", required=True, help="the served database, for SQL publishing")
    p.add_argument("--nchan-port", type=int, default=18272)
    p.add_argument("--workloads", default="100x50,1000x50,3000x50,10000x10",
                   help="SUBSCRIBERSxRATE,... (each a ramp then a hold); empty: none")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--idle", type=int, default=5000,
                   help="websockets of the ramp-only run (memory, handshakes); 0: none")
    options = p.parse_args()
    rows = []
    with NchanServer(options.nchan_port) as nchan:
        # The ramp-only run first: RSS growth per connection is only right on a process
        # that has not grown and freed memory before.
        if options.idle:
            runs = compared(options, nchan, ["-n", str(options.idle), "--stages", "ramp",
                                             "--ramp-rate", "0", "--connect-concurrency", "50"])
            if runs:
                cells = [idle_cells(run) for run in runs]
                rows.append(("idle websocket (RSS growth)", [c[0] for c in cells]))
                rows.append(("handshakes (concurrency 50)", [c[1] for c in cells]))
        for workload in filter(None, options.workloads.split(",")):
            n, rate = workload.split("x")
            runs = compared(options, nchan, ["-n", n, "--rate", rate, "--duration",
                                             str(options.duration), "--ramp-rate", "1000",
                                             "--settle", "20"])
            rows.append((f"{int(n):,} × {rate}/s",
                         [fanout_cell(run) for run in runs] or ["(no report)"] * 2))
    print("| workload | rtbus p50 / p99, CPU per delivery | Nchan p50 / p99, CPU per delivery |")
    print("|---|---|---|")
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
