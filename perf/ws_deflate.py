"""Micro-benchmark of permessage-deflate on the send path: bytes on the wire and CPU.

For three typical batches (one presence update, one Discuss message with its records, ten
such messages), prints the frame size uncompressed and compressed at zlib levels 1, 6
and 9, and the time to compress one batch once. Then, for a fan-out of one batch to
`--subscribers` connections, the codec's CPU per delivery (building the frame and
queueing it on each connection's ServerProtocol; no socket):

- plain: the shared uncompressed frame;
- shared deflate: compressed once, the same frame bytes for every connection (what
  rtbus does, thanks to server_no_context_takeover);
- per-connection deflate: compressed again for each connection, which is what a
  server keeping a compression context per connection has to do.

    .venv/bin/python perf/ws_deflate.py [--subscribers 1000] [--seconds 1]

Prints the best of several rounds (the least disturbed on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402

from rtbus.websocket.deflate import CompressionPolicy, DeflateParams, OutgoingMessage  # noqa: E402
from rtbus.websocket.protocol import ServerProtocol  # noqa: E402

DEFLATE = DeflateParams(15)


def discuss_message(i: int) -> dict:
    """A notification shaped like Odoo 19's discuss.channel/new_message."""
    return {"id": 81234 + i, "message": {"type": "discuss.channel/new_message", "payload": {
        "data": {
            "mail.message": [{
                "id": 55120 + i, "author_id": 7, "body": ["markup", f"<p>Hi team, the build #{1400 + i} "
                                                                   "passed; deploying to staging now.</p>"],
                "create_date": "2026-11-24 10:12:%02d" % (i % 60), "date": "2026-11-24 10:12:%02d" % (i % 60),
                "message_type": "comment", "model": "discuss.channel", "res_id": 12,
                "subtype_id": [1, "Discussions"], "thread": {"id": 12, "model": "discuss.channel"},
                "attachment_ids": [], "reactions": [], "starred": False, "is_note": False,
                "parent_id": False, "write_date": "2026-11-24 10:12:%02d" % (i % 60),
            }],
            "res.partner": [{"id": 7, "name": "Marc Demo", "write_date": "2026-11-20 08:00:00",
                             "avatar_128_access_token": "f3c2a1b0e9d8c7b6a5f4e3d2c1b0a9f8",
                             "im_status": "online", "is_company": False, "user": {"id": 6,
                                                                                  "share": False}}],
        },
        "id": 12, "temporary_id": 0.4213 + i,
    }}}


PRESENCE = [{"id": 81000, "message": {"type": "bus.bus/im_status_updated", "payload": {
    "partner_id": 7, "im_status": "away", "presence_status": "away"}}}]
BATCHES = (("presence update", orjson.dumps(PRESENCE)),
           ("1 discuss message", orjson.dumps([discuss_message(0)])),
           ("10 discuss messages", orjson.dumps([discuss_message(i) for i in range(10)])))


def best_seconds(run, seconds: float) -> float:
    """The best wall time of `run()` over rounds taking `seconds` in all."""
    run()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def sizes(seconds: float) -> None:
    print(f"{'batch':<22} {'plain B':>8} " + " ".join(f"{f'level {lv} B':>10} {'µs':>6}" for lv in (1, 6, 9)))
    for label, payload in BATCHES:
        cells = []
        for level in (1, 6, 9):
            policy = CompressionPolicy(threshold=0, level=level)
            frame = OutgoingMessage(payload, policy).frame(DEFLATE)
            took = best_seconds(lambda: [policy.compress(payload, 15) for _ in range(100)], seconds / 9)
            cells.append(f"{len(frame):>10} {took / 100 * 1e6:>6.1f}")
        print(f"{label:<22} {len(OutgoingMessage(payload, None).frame()):>8} " + " ".join(cells))


def fan_out(subscribers: int, seconds: float) -> None:
    policy = CompressionPolicy(threshold=0)           # the default level
    plain = [ServerProtocol() for _ in range(subscribers)]
    deflating = [ServerProtocol(deflate=DEFLATE) for _ in range(subscribers)]

    def shared(protocols, payload):
        message = OutgoingMessage(payload, policy)
        for protocol in protocols:
            protocol.send_message(message)
            protocol.data_to_send()

    def per_connection(protocols, payload):
        for protocol in protocols:
            protocol.send_message(OutgoingMessage(payload, policy))
            protocol.data_to_send()

    print(f"\nfan-out of one batch to {subscribers} connections, codec CPU per delivery (µs), "
          f"zlib level {policy.level}:")
    print(f"{'batch':<22} {'plain':>8} {'shared deflate':>15} {'per-connection deflate':>23}")
    for label, payload in BATCHES:
        cells = [best_seconds(lambda: shared(plain, payload), seconds / 9),
                 best_seconds(lambda: shared(deflating, payload), seconds / 9),
                 best_seconds(lambda: per_connection(deflating, payload), seconds / 9)]
        print(f"{label:<22} " + " ".join(f"{width}" for width in (
            f"{cells[0] / subscribers * 1e6:>8.2f}", f"{cells[1] / subscribers * 1e6:>15.2f}",
            f"{cells[2] / subscribers * 1e6:>23.2f}")))


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--subscribers", type=int, default=1000)
    options.add_argument("--seconds", type=float, default=1.0, help="time spent per table")
    args = options.parse_args()
    sizes(args.seconds)
    fan_out(args.subscribers, args.seconds)


if __name__ == "__main__":
    main()
