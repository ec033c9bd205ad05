"""What one idle websocket holds, in one gevent process, without the network.

N `WebsocketConnection`s are served over socketpairs (public sessions, the stub hub of
`tests/stub_hub.py`, the real settings) and left idle, waiting for bytes. Prints the
memory per connection that tracemalloc sees once they are built and once they wait,
the RSS growth per connection, and the allocation sites that hold the most while they
wait. A comparison between versions of the code: the server's figure (RSS growth over
a ramp of idle websockets, `rtbus-bench --stages ramp`) adds the pywsgi handler, the
edge's bookkeeping and the kernel-facing socket objects.

    python perf/ws_idle.py --connections 2000
"""

from __future__ import annotations

import argparse
import gc
import socket
import tracemalloc

import gevent

from ws_fanout import StubHub   # patches the standard library first

from rtbus.session import Session  # noqa: E402
from rtbus.websocket.connection import WebsocketConnection  # noqa: E402


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--top", type=int, default=12, help="allocation sites to list")
    options = p.parse_args()
    n = options.connections
    hub = StubHub()
    session = Session(sid=None, dbname="bench", uid=None, partner_id=None, group_ids=())
    pairs = [socket.socketpair() for _ in range(n)]
    gevent.sleep(0.1)
    gc.collect()
    rss_before = rss_kb()
    tracemalloc.start(1)
    empty = tracemalloc.take_snapshot()
    connections = [WebsocketConnection(hub, server, session, remote="bench") for server, _ in pairs]
    gc.collect()
    built = tracemalloc.take_snapshot()
    for connection in connections:
        connection.start()
    gevent.sleep(0.5)
    gc.collect()
    waiting = tracemalloc.take_snapshot()
    rss_after = rss_kb()

    def per(snapshot) -> float:
        diff = snapshot.compare_to(empty, "filename")
        return sum(stat.size_diff for stat in diff) / n / 1024

    print(f"{n} idle connections: {per(built):.2f} KB each once built, {per(waiting):.2f} KB "
          f"once they wait for bytes (tracemalloc); RSS growth {(rss_after - rss_before) / n:.2f} KB "
          f"each (with tracemalloc's own overhead)")
    for stat in waiting.compare_to(empty, "lineno")[:options.top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / n:8.0f} B  {stat.count_diff / n:5.2f} blocks  "
              f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}")
    tracemalloc.stop()
    for connection in connections:
        connection.abort()
    gevent.sleep(0.1)     # their ends run in greenlets


if __name__ == "__main__":
    main()
