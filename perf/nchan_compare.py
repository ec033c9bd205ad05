"""Side by side: the same rtbus-bench workloads against a running rtbus and against Nchan.

Starts its own nginx with the Nchan module (one worker; websocket subscribers on
/websocket for the channel `bench`, publishing on /pub/<channel>) in a temporary
directory, runs `rtbus-bench --json` for each workload against rtbus, then against
Nchan, and prints the table of issue 17: latency of the hold stage, the server's CPU per
delivery (the rtbus gevent process, not its PostgreSQL backends; the nginx worker), lost
notifications, and from a ramp-only run the memory per websocket and handshakes/s.

    python perf/nchan_compare.py --rtbus http://127.0.0.1:8072 --rtbus-pid MASTER_PID \\
        --dsn "host=... dbname=rtbus user=..." --workloads 1000x50,3000x50 --idle 5000

Run it under the machine's benchmark lock; it kills only the nginx it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

NGINX = "/usr/sbin/nginx"
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
BENCH = os.path.join(os.path.dirname(sys.executable), "rtbus-bench")

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
load_module {module};
events {{ worker_connections 20000; }}
worker_rlimit_nofile 19000;
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  server {{
    listen 127.0.0.1:{port};
    location = /websocket {{
      nchan_subscriber websocket;
      nchan_channel_id bench;
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/pub/(.+)$ {{ nchan_publisher http; nchan_channel_id $1; }}
  }}
}}
"""


def start_nginx(directory: str, port: int) -> subprocess.Popen:
    """nginx in the foreground (its own session) with one Nchan worker; waits for it."""
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=directory, module=NCHAN_MODULE, port=port))
    process = subprocess.Popen([NGINX, "-c", conf, "-e", os.path.join(directory, "error.log")],
                               start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if worker_pid(process.pid) is not None:
            return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("nginx did not start its worker within 10 s")


def worker_pid(master: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == master:
                        return int(entry)
            except (OSError, IndexError, ValueError):
                continue
    return None


def bench(target: str, pid: int, args: list[str]) -> dict | None:
    """One rtbus-bench run; its JSON report, or None when it produced none."""
    command = [BENCH, target, "--server-pid", str(pid), "--json", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(f"no report from {' '.join(command)}: {done.stderr[-500:]}\n")
        return None


def stage(report: dict | None, name: str) -> dict:
    for found in (report or {}).get("stages", ()):
        if found["stage"] == name:
            return found
    return {}


def fanout_row(report: dict | None) -> str:
    hold = stage(report, "hold")
    if not hold:
        return "(no report)"
    latency, server = hold["latency_ms"], hold.get("server") or {}
    return (f"{latency['p50']} / {latency['p99']} ms, {server.get('cpu_us_per_delivery')} µs, "
            f"lost {hold['lost']}")


def idle_row(report: dict | None) -> tuple[str, str]:
    ramp = stage(report, "ramp")
    if not ramp:
        return "(no report)", "(no report)"
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
    p.add_argument("--only", choices=("rtbus", "nchan"), help="run one side only")
    options = p.parse_args()
    directory = tempfile.mkdtemp(prefix="rtbus-nchan-")
    nginx = start_nginx(directory, options.nchan_port) if options.only != "rtbus" else None
    try:
        sides = {}
        if options.only != "nchan":
            sides["rtbus"] = (options.rtbus, options.rtbus_pid, ["--dsn", options.dsn])
        if nginx is not None:
            sides["Nchan"] = (f"http://127.0.0.1:{options.nchan_port}", worker_pid(nginx.pid),
                              ["--publish", "nchan"])
        # The ramp-only run first: RSS growth per connection is only right on a process
        # that has not grown and freed memory before.
        rows = []
        if options.idle:
            ramps = [idle_row(bench(target, pid, [*extra, "-n", str(options.idle),
                                                  "--stages", "ramp", "--ramp-rate", "0",
                                                  "--connect-concurrency", "50"]))
                     for target, pid, extra in sides.values()]
            rows.append(("idle websocket (RSS growth)", [r[0] for r in ramps]))
            rows.append(("handshakes (concurrency 50)", [r[1] for r in ramps]))
        for workload in filter(None, options.workloads.split(",")):
            n, rate = workload.split("x")
            cells = [fanout_row(bench(target, pid, [*extra, "-n", n, "--rate", rate,
                                                    "--duration", str(options.duration),
                                                    "--ramp-rate", "1000", "--settle", "20"]))
                     for target, pid, extra in sides.values()]
            rows.append((f"{int(n):,} × {rate}/s", cells))
        print("| workload | " + " | ".join(f"{side} p50 / p99, CPU per delivery" for side in sides)
              + " |")
        print("|---|" + "---|" * len(sides))
        for name, cells in rows:
            print(f"| {name} | " + " | ".join(cells) + " |")
    finally:
        if nginx is not None:
            os.killpg(nginx.pid, signal.SIGQUIT)
            nginx.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
