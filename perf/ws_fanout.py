"""The websocket fan-out's CPU per delivery, in one gevent process, without the network.

N `WebsocketConnection`s are served over socketpairs (public sessions, a stub hub with
the real settings, frames and counters). Each round puts one batch in every mailbox, as
ImDispatch does, and waits until every connection has sent it; the clients' ends are
read afterwards, outside the timed part. The figure is the process CPU of the rounds
divided by the deliveries: the dispatcher's put, the wake-ups, greenlet switches and
the send system calls, not PostgreSQL nor the client. A comparison between versions of
the code, not an absolute figure.

    python perf/ws_fanout.py --connections 1000 --rounds 200
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from rtbus.session import Session  # noqa: E402
from rtbus.websocket.connection import WebsocketConnection  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from stub_hub import StubHub  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--payload-bytes", type=int, default=80)
    options = p.parse_args()
    hub = StubHub()
    session = Session(sid=None, dbname="bench", uid=None, partner_id=None, group_ids=())
    pairs = [socket.socketpair() for _ in range(options.connections)]
    for server, client in pairs:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    connections = [WebsocketConnection(hub, server, session, remote="bench")
                   for server, _ in pairs]
    for connection in connections:
        connection.start()
    gevent.sleep(0.2)
    mailboxes = [c.mailbox for c in connections]
    cpu = 0.0
    received = 0
    for n in range(1, options.rounds + 1):
        batch = b'[{"id":%d,"message":{"type":"bench","payload":"%s"}}]' % (
            n, b"x" * options.payload_bytes)
        started = time.process_time()
        for mailbox in mailboxes:
            mailbox.put(batch, [n], None)
        while hub.sent_count("batches_sent") < n * len(connections):
            gevent.sleep(0)
        cpu += time.process_time() - started
        for _, client in pairs:
            received += len(client.recv(1 << 20))
    deliveries = options.rounds * len(connections)
    print(f"{len(connections)} connections x {options.rounds} batches: "
          f"{1e6 * cpu / deliveries:.2f} µs of CPU per delivery "
          f"({received} bytes received, {hub.sent_count('batches_written_through')} written through)")
    for connection in connections:
        connection.abort()
    gevent.sleep(0.1)     # their ends run in greenlets


if __name__ == "__main__":
    main()
