"""Benchmark: hold N long-polls on a running rtbus, wake them with one publish.

Opens N connections to the longpolling port (raw sockets on gevent, one greenlet
each), sends each a ``/longpolling/poll`` on one channel after the current last id,
waits until they are all held, publishes one notification on that channel, and
collects the answers. Prints how many polls were held and woken, the time to wake
them all, and the RSS of the server's gevent process (the child titled
``rtbus: gevent`` of the master pid given) before, while holding, and after: the
memory one held poll costs.

    .venv/bin/python perf/longpoll_hold.py --master-pid 1234 --port 8072 \\
        --db mydb --polls 5000

The database is reached with libpq's environment (PGHOST, PGPORT, PGUSER...) or
--dsn, to publish. The polls are cookie-less: a server locked down with
``public_channels`` must let the channel through. Each poll counts against
``longpolling_max_polls``.
Prints numbers only; it asserts nothing.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
import psycopg2  # noqa: E402

from rtbus.bus.publish import Notifier, Publisher  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def gevent_child(master_pid: int) -> int:
    """The pid of the master's child whose title starts with ``rtbus: gevent``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == master_pid and title.startswith("rtbus: gevent"):
            return int(entry)
    raise SystemExit(f"no child titled 'rtbus: gevent' under pid {master_pid}")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


class Fleet:
    """N polls, one greenlet each; `held` counts requests fully sent and not yet answered."""

    def __init__(self, port: int, count: int, channel: str, last: int, timeout: float):
        body = orjson.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                             "params": {"channels": [channel], "last": last}})
        self.request = (b"POST /longpolling/poll HTTP/1.1\r\nHost: bench\r\n"
                        b"Content-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.port = port
        self.count = count
        self.timeout = timeout
        self.sent = 0
        self.answers: list[bytes] = []
        self.errors: list[str] = []
        self.all_sent = gevent.event.Event()

    def run(self) -> list[gevent.Greenlet]:
        return [gevent.spawn(self._one) for _ in range(self.count)]

    def _one(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        except OSError as exc:
            self._failed(f"connect: {exc}")
            return
        try:
            sock.sendall(self.request)
            self.sent += 1
            if self.sent + len(self.errors) >= self.count:
                self.all_sent.set()
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            self.answers.append(b"".join(chunks))
        except OSError as exc:
            self._failed(f"poll: {exc}")
        finally:
            sock.close()

    def _failed(self, error: str) -> None:
        self.errors.append(error)
        if self.sent + len(self.errors) >= self.count:
            self.all_sent.set()


def woken(answers: list[bytes], notification_id: int) -> int:
    count = 0
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 200"):
            result = orjson.loads(body).get("result") or []
            count += any(n["id"] == notification_id for n in result)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master-pid", type=int, required=True)
    parser.add_argument("--port", type=int, default=8072, help="the longpolling port")
    parser.add_argument("--db", required=True, help="the served database to publish in")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* env)")
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--channel", default="broadcast")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait after every request is sent, before measuring")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.polls + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.polls + 1000), hard))
    pid = gevent_child(args.master_pid)
    conn = psycopg2.connect(args.dsn, dbname=args.db)
    publisher = Publisher(Notifier())
    try:
        last = publisher.publish(conn, args.db, [(args.channel, "bench.marker", None)])[0]
        gevent.sleep(0.5)
        before = rss(pid)
        fleet = Fleet(args.port, args.polls, args.channel, last, args.timeout)
        started = time.monotonic()
        greenlets = fleet.run()
        fleet.all_sent.wait(args.timeout)
        sent_in = time.monotonic() - started
        gevent.sleep(args.settle)
        holding = rss(pid)
        held = fleet.sent - len(fleet.answers)
        woke_at = time.monotonic()
        notification = publisher.publish(conn, args.db, [(args.channel, "bench.wake", {"n": 1})])[0]
        gevent.joinall(greenlets, timeout=args.timeout)
        wake_seconds = time.monotonic() - woke_at
        gevent.sleep(1.0)
        after = rss(pid)
    finally:
        publisher.notifier.close()
        conn.close()

    print(f"gevent process        pid {pid}")
    print(f"polls requested       {args.polls}")
    print(f"requests sent         {fleet.sent} in {sent_in:.2f} s ({len(fleet.errors)} errors)")
    print(f"held before publish   {held}")
    print(f"woken by one publish  {woken(fleet.answers, notification)} in {wake_seconds:.2f} s")
    print(f"RSS before            {mib(before)}")
    print(f"RSS holding           {mib(holding)}")
    print(f"RSS after             {mib(after)}")
    if held:
        print(f"memory per held poll  {(holding - before) / held / 1024:.1f} KiB")
    for error in sorted(set(fleet.errors))[:5]:
        print(f"error: {error}")


if __name__ == "__main__":
    main()
