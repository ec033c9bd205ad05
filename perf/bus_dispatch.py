"""Benchmark ImDispatch: publish to N subscribers, measure delivery.

Runs one ImDispatch in this process against a database (given by flags or PG*
environment variables; without --db a throwaway cluster is created and removed),
attaches N subscribers spread over K channels, publishes at R notifications/s for T
seconds through SQL (rtbus_sendone + commit) and/or the Python API, and prints
deliveries/s, publish->received latency percentiles, lost and duplicated deliveries,
and the dispatcher's SQL statements per notification.

    .venv/bin/python perf/bus_dispatch.py --subscribers 1000 --channels 10 --rate 200

Prints numbers only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
import psycopg2  # noqa: E402

from rtbus.bus.channels import encode  # noqa: E402
from rtbus.bus.dispatch import ImDispatch  # noqa: E402
from rtbus.bus.mailbox import Mailbox  # noqa: E402
from rtbus.bus.publish import Notifier, Publisher  # noqa: E402
from rtbus.db import schema  # noqa: E402


class SignallingMailbox(Mailbox):
    """A mailbox that tells one shared drain loop when it has something."""

    def __init__(self, index: int, ready: queue.SimpleQueue, max_bytes: int):
        super().__init__(max_bytes)
        self.index = index
        self.ready = ready

    def put(self, batch, ids):
        accepted = super().put(batch, ids)
        if accepted:
            self.ready.put(self)
        return accepted


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("PGHOST"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "0")) or None)
    p.add_argument("--user", default=os.environ.get("PGUSER"))
    p.add_argument("--db", default=os.environ.get("PGDATABASE"),
                   help="database with the rtbus schema (created/upgraded if needed); "
                        "default: a throwaway cluster")
    p.add_argument("--imbus-db", default="postgres")
    p.add_argument("--subscribers", "-n", type=int, default=100)
    p.add_argument("--channels", "-k", type=int, default=10)
    p.add_argument("--rate", "-r", type=float, default=100.0, help="notifications per second")
    p.add_argument("--duration", "-t", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--mode", choices=("sql", "python", "both"), default="both")
    return p.parse_args(argv)


def start_throwaway_cluster():
    from rtbus.db.cluster import Cluster

    base = tempfile.mkdtemp(prefix="rtbus-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    cluster = Cluster(os.path.join(base, "data"), fast=True, tcp=True, max_connections=100)
    cluster.init()
    cluster.start()
    return cluster, base


def main(argv=None) -> int:
    args = parse_args(argv)
    cluster = base = None
    if args.db is None:
        cluster, base = start_throwaway_cluster()
        kwargs = {"host": "127.0.0.1", "port": cluster.port, "user": cluster.superuser}
        args.db = "rtbus_bench"
        cluster.create_database(args.db)
    else:
        kwargs = {k: v for k, v in (("host", args.host), ("port", args.port),
                                    ("user", args.user)) if v}
    try:
        return run(args, kwargs)
    finally:
        if cluster is not None:
            import shutil
            cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)


def run(args, kwargs) -> int:
    conn = psycopg2.connect(dbname=args.db, **kwargs)
    schema.upgrade(conn)
    conn.close()

    dispatch = ImDispatch(lambda db: dict(kwargs), [args.db], imbus_db_name=args.imbus_db)
    if not dispatch.start(wait=10):
        print("dispatcher could not connect", file=sys.stderr)
        return 1
    ready: queue.SimpleQueue = queue.SimpleQueue()
    channel_names = [f"bench-{c}" for c in range(args.channels)]
    members: dict[str, list[int]] = {name: [] for name in channel_names}
    mailboxes = []
    for i in range(args.subscribers):
        name = channel_names[i % args.channels]
        members[name].append(i)
        box = SignallingMailbox(i, ready, 64 << 20)
        mailboxes.append(box)
        dispatch.subscribe(i, args.db, [encode(args.db, name)], 0, box)
    dispatch.wait_applied(30)

    received: dict[int, dict[int, int]] = {i: {} for i in range(args.subscribers)}  # seq -> count
    latencies: list[float] = []
    last_receipt = [0.0]
    draining = threading.Event()

    def drain():
        while not draining.is_set() or not ready.empty():
            try:
                box = ready.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = box.get(0)
            if batch is None:
                continue
            now = time.time()
            mine = received[box.index]
            for notification in orjson.loads(batch):
                payload = notification["message"]["payload"]
                mine[payload["seq"]] = mine.get(payload["seq"], 0) + 1
                latencies.append(now - payload["t"])
            last_receipt[0] = now

    drainer = threading.Thread(target=drain, name="drain")
    drainer.start()

    published: list[tuple[int, str]] = []         # (seq, channel name)
    notifier = Notifier(args.imbus_db)
    publisher = Publisher(notifier)
    pub_conn = psycopg2.connect(dbname=args.db, **kwargs)
    stats_before = dispatch.stats()
    interval = 1.0 / args.rate
    started = time.time()
    next_at = time.monotonic()
    seq = 0
    while time.time() - started < args.duration:
        name = channel_names[seq % args.channels]
        payload = {"seq": seq, "t": time.time()}
        use_sql = args.mode == "sql" or (args.mode == "both" and seq % 2 == 0)
        if use_sql:
            with pub_conn.cursor() as cur:
                cur.execute("SELECT rtbus_sendone(%s::jsonb, 'bench', %s::jsonb)",
                            (orjson.dumps(name).decode(), orjson.dumps(payload).decode()))
            pub_conn.commit()
        else:
            publisher.publish(pub_conn, args.db, [(name, "bench", payload)])
        published.append((seq, name))
        seq += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    publish_seconds = time.time() - started

    expected = sum(len(members[name]) for _, name in published)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = sum(len(r) for r in received.values())
        if got >= expected:
            break
        time.sleep(0.05)
    time.sleep(0.5)                               # let duplicates, if any, arrive
    draining.set()
    drainer.join(10)
    stats_after = dispatch.stats()
    dispatch.stop(5)
    notifier.close()
    pub_conn.close()

    lost = dup = delivered = 0
    for seq_, name in published:
        for i in members[name]:
            count = received[i].get(seq_, 0)
            delivered += min(count, 1)
            lost += count == 0
            dup += max(count - 1, 0)
    stray = sum(len(r) for r in received.values()) - delivered
    span = max(last_receipt[0] - started, publish_seconds)
    latencies.sort()

    def pct(p):
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    queries = stats_after["queries"] - stats_before["queries"]
    print(f"subscribers={args.subscribers} channels={args.channels} rate={args.rate:g}/s "
          f"duration={args.duration:g}s mode={args.mode}")
    print(f"published           {len(published)} notifications "
          f"({len(published) / publish_seconds:.1f}/s achieved)")
    print(f"deliveries          {delivered} of {expected} expected, "
          f"{delivered / span:.0f}/s")
    print(f"latency ms          p50={pct(50):.1f} p90={pct(90):.1f} p99={pct(99):.1f} "
          f"max={(latencies[-1] * 1000 if latencies else float('nan')):.1f} "
          f"(publish call start -> drained)")
    print(f"lost={lost} duplicated={dup} stray={stray}")
    print(f"dispatcher          wakeups={stats_after['wakeups'] - stats_before['wakeups']} "
          f"queries={queries} batches_encoded="
          f"{stats_after['batches_encoded'] - stats_before['batches_encoded']} "
          f"mailbox_puts={stats_after['mailbox_puts'] - stats_before['mailbox_puts']}")
    print(f"SQL statements per notification   {queries / max(len(published), 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
