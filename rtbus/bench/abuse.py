"""``rtbus-bench abuse``: hostile clients and legitimate ones at the same time, against a
running server, with numbers.

For ``--duration`` seconds, on the evented port:

- *slowloris*: ``--stalled`` connections that send half a request head and stall, topped
  up as the server ends them;
- *heads*: requests with a 100 KiB head (50 headers of 2 KiB), one after the other;
- *bodies*: endless chunked POSTs to ``/websocket/peek_notifications``;
- *sids*: peeks with never-issued session ids, ``--sid-rate`` a second;
- *cross-origin*: websocket handshakes from a foreign Origin with a session cookie;
- *frames*: websockets that announce a 2 MiB frame, or start a fragmented message and
  never finish it;

while ``--subscribers`` legitimate websockets receive a notification published every
0.2 s (their latency is publish → receive) and a probe times ``/websocket/health`` on a
fresh connection every 0.2 s. It prints the health latency, the subscribers' p50/p99,
the answers each attack got, the server's refusals by reason (from ``/metrics``) and its
RSS before, at the peak and after (``--server-pid``: the master or the gevent process).

Publishing goes through PostgreSQL (libpq's environment or ``--dsn``) into ``--db``.
Prints numbers; exits 1 when health failed or a subscriber lost a notification.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time

from rtbus.websocket.frames import encode_header

HEAD_TIMEOUT = 10.0


def parse(argv):
    parser = argparse.ArgumentParser(prog="rtbus-bench abuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8072, help="the evented (longpolling) port")
    parser.add_argument("--db", required=True, help="the served database to publish into")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: environment)")
    parser.add_argument("--server-pid", type=int, help="the rtbus master or gevent process, for RSS")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--stalled", type=int, default=1000, help="slowloris connections")
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--sid-rate", type=float, default=100.0, help="random-sid peeks a second")
    parser.add_argument("--attacks", default="slowloris,heads,bodies,sids,cross-origin,frames",
                        help="comma-separated subset of the attacks")
    parser.add_argument("--legit-source", default=None,
                        help="local address of the subscribers and the health probe (default: "
                             "127.0.0.2 when --host is 127.0.0.1, so that the per-client cap "
                             "counts them apart from the attackers, as distinct clients are)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args(argv)
    if args.legit_source is None and args.host == "127.0.0.1":
        args.legit_source = "127.0.0.2"
    return args


class Tally:
    """Answers by attack and outcome, from several threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, attack: str, outcome: str) -> None:
        with self._lock:
            self.counts[attack][outcome] += 1


def percentile(values, fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _status(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0]
    parts = line.split()
    return parts[1].decode(errors="replace") if len(parts) >= 2 and line.startswith(b"HTTP/") else "no answer"


def _read_until_closed(sock, limit: int = 1 << 16) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def _handshake(host: str, port: int, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /websocket HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n").encode()


def _close_code(data: bytes) -> str:
    _, _, rest = data.partition(b"\r\n\r\n")
    while len(rest) >= 2:
        opcode, length = rest[0] & 0x0F, rest[1] & 0x7F
        offset = 2 + (2 if length == 126 else 8 if length == 127 else 0)
        if length >= 126:
            length = int.from_bytes(rest[2:offset], "big")
        if opcode == 0x8:
            return str(struct.unpack("!H", rest[offset:offset + 2])[0]) if length >= 2 else "close"
        rest = rest[offset + length:]
    return "no close frame"


def _masked(opcode: int, payload: bytes, fin: bool = True, announced: int | None = None) -> bytes:
    length = len(payload) if announced is None else announced
    head = encode_header((0x80 if fin else 0) | opcode, length, mask_bit=0x80)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Drill:
    def __init__(self, args):
        self.args = args
        self.stop = threading.Event()
        self.tally = Tally()
        self.health: list[float] = []
        self.health_failures = 0
        self.latencies: list[float] = []
        self.published: dict[int, float] = {}
        self.received: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def connect(self, timeout: float = 15.0, source: str | None = None) -> socket.socket:
        return socket.create_connection((self.args.host, self.args.port), timeout=timeout,
                                        source_address=(source, 0) if source else None)

    # -- legitimate clients -------------------------------------------------------------
    def probe_health(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                sock = self.connect(timeout=5, source=self.args.legit_source)
                try:
                    sock.sendall(f"GET /websocket/health HTTP/1.1\r\nHost: {self.args.host}\r\n"
                                 f"Connection: close\r\n\r\n".encode())
                    ok = _status(_read_until_closed(sock)) == "200"
                finally:
                    sock.close()
            except OSError:
                ok = False
            if ok:
                self.health.append(time.monotonic() - started)
            else:
                self.health_failures += 1
            self.stop.wait(0.2)

    def subscriber(self, ready: threading.Barrier) -> None:
        import websocket

        ws = websocket.create_connection(f"ws://{self.args.host}:{self.args.port}/websocket", timeout=5,
                                         socket=self.connect(timeout=5, source=self.args.legit_source))
        try:
            ws.send(json.dumps({"event_name": "subscribe",
                                "data": {"channels": ["abuse.drill"], "last": 0}}))
            ready.wait()
            ws.settimeout(1.0)
            while not self.stop.is_set():
                try:
                    batch = json.loads(ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                now = time.time()
                for notification in batch:
                    message = notification.get("message", {})
                    if message.get("type") == "abuse.drill":
                        with self._lock:
                            self.received[notification["id"]] += 1
                            self.latencies.append(now - message["payload"]["at"])
        except Exception:
            self.tally.add("subscribers", "dropped")
        finally:
            ws.close()

    def publisher(self, ready: threading.Barrier) -> None:
        import psycopg2

        from rtbus.bus.publish import Notifier, Publisher

        try:
            conn = psycopg2.connect(self.args.dsn)
        except psycopg2.Error as exc:
            print(f"rtbus-bench abuse: cannot publish: {str(exc).strip()}", file=sys.stderr)
            ready.abort()
            return
        publisher = Publisher(Notifier())
        ready.wait()
        try:
            while not self.stop.wait(0.2):
                at = time.time()
                (notification_id,) = publisher.publish(conn, self.args.db,
                                                       [("abuse.drill", "abuse.drill", {"at": at})])
                self.published[notification_id] = at
        finally:
            conn.close()

    # -- attacks --------------------------------------------------------------------------
    def slowloris(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        half = f"GET /websocket/health HTTP/1.1\r\nHost: {self.args.host}\r\nX-Slow: ".encode()

        def open_one():
            try:
                sock = self.connect()
                sock.sendall(half)
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            except OSError:
                self.tally.add("slowloris", "connect failed")

        for _ in range(self.args.stalled):
            open_one()
        self.tally.add("slowloris", f"opened {self.args.stalled}")
        while not self.stop.is_set():
            for key, _ in selector.select(0.5):
                sock = key.fileobj
                selector.unregister(sock)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                sock.close()
                self.tally.add("slowloris", _status(data))
                open_one()
        for key in list(selector.get_map().values()):
            key.fileobj.close()

    def _one_shot(self, attack: str, send) -> None:
        while not self.stop.is_set():
            try:
                sock = self.connect()
                try:
                    send(sock)
                except OSError:
                    pass
                sock.settimeout(HEAD_TIMEOUT + 5)
                self.tally.add(attack, _status(_read_until_closed(sock)))
                sock.close()
            except OSError:
                self.tally.add(attack, "connect failed")
            self.stop.wait(0.05)

    def heads(self) -> None:
        def send(sock):
            sock.sendall(f"GET /websocket/health HTTP/1.1\r\nHost: {self.args.host}\r\n".encode())
            for index in range(50):           # 100 KiB in 50 headers
                sock.sendall(b"X-Pad-%d: %s\r\n" % (index, b"h" * 2048))
            sock.sendall(b"\r\n")
        self._one_shot("heads", send)

    def bodies(self) -> None:
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)

        def send(sock):
            sock.sendall(f"POST /websocket/peek_notifications HTTP/1.1\r\nHost: {self.args.host}\r\n"
                         f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            sock.settimeout(0.0)
            for _ in range(1024):            # 64 MiB, or until the server stops reading
                try:
                    sock.sendall(chunk)
                except BlockingIOError:
                    break
            sock.settimeout(HEAD_TIMEOUT)
        self._one_shot("bodies", send)

    def sids(self) -> None:
        body = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                           "params": {"channels": [], "last": 0, "is_first_poll": True}}).encode()
        interval = 1.0 / self.args.sid_rate

        def send(sock):
            sid = secrets.token_urlsafe(48)
            sock.sendall(f"POST /websocket/peek_notifications HTTP/1.1\r\nHost: {self.args.host}\r\n"
                         f"Content-Type: application/json\r\nCookie: session_id={sid}\r\n"
                         f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                sock = self.connect()
                send(sock)
                answer = _read_until_closed(sock)
                sock.close()
                outcome = "error 100" if b'"code":100' in answer or b'"code": 100' in answer else _status(answer)
            except OSError:
                outcome = "connect failed"
            self.tally.add("sids", outcome)
            self.stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def cross_origin(self) -> None:
        def send(sock):
            sock.sendall(_handshake(self.args.host, self.args.port,
                                    "Origin: https://evil.example\r\nCookie: session_id="
                                    + secrets.token_urlsafe(48) + "\r\n"))
            sock.settimeout(1.0)
        while not self.stop.is_set():
            try:
                sock = self.connect()
                send(sock)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                status = _status(data)
                self.tally.add("cross-origin", status)
                sock.close()
            except OSError:
                self.tally.add("cross-origin", "connect failed")
            self.stop.wait(0.1)

    def frames(self) -> None:
        """A 2 MiB frame announced (close 1009 expected), then unfinished fragmented
        messages kept open, up to 64 at once, until the receive budget refuses one."""
        self._oversized_frame()
        held: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                try:
                    sock = self._open_websocket()
                    sock.sendall(_masked(0x1, b"x" * 60000, fin=False))   # and never the rest
                    sock.settimeout(0.5)
                    outcome = _close_code(b"\r\n\r\n" + _read_until_closed(sock))
                except OSError:
                    self.tally.add("frames: unfinished message", "connect failed")
                    continue
                if outcome == "no close frame":
                    if len(held) < 64:
                        held.append(sock)
                    else:
                        sock.close()
                    self.tally.add("frames: unfinished message", "held (budget not reached)")
                else:
                    sock.close()
                    self.tally.add("frames: unfinished message", outcome)
                self.stop.wait(0.1)
        finally:
            for sock in held:
                sock.close()

    def _open_websocket(self) -> socket.socket:
        sock = self.connect()
        sock.sendall(_handshake(self.args.host, self.args.port,
                                f"Origin: http://{self.args.host}:{self.args.port}\r\n"))
        sock.settimeout(5.0)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        return sock

    def _oversized_frame(self) -> None:
        try:
            sock = self._open_websocket()
            sock.sendall(_masked(0x1, b"x" * 1024, announced=2 << 20)[:1030])
            sock.settimeout(10.0)
            self.tally.add("frames: 2 MiB frame", _close_code(b"\r\n\r\n" + _read_until_closed(sock)))
            sock.close()
        except OSError:
            self.tally.add("frames: 2 MiB frame", "connect failed")


# -- the server's own figures -----------------------------------------------------------------

WATCHED = ("rtbus_edge_refusals_total", "rtbus_edge_deadlines_passed_total",
           "rtbus_session_refusals_total", "rtbus_cross_origin_requests_total",
           "rtbus_websocket_closes_total", "rtbus_websocket_receive_budget_refusals_total")


def scrape(host: str, port: int) -> dict[str, float]:
    """The WATCHED families of /metrics, summed over processes, by their own label."""
    import http.client
    import re

    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    figures: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)\{([^}]*)\} (\S+)$", line)
        if not match or match.group(1) not in WATCHED:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        own = [value for key, value in labels.items() if key not in ("process", "kind", "worker")]
        figures[match.group(1) + (f"{{{own[0]}}}" if own else "")] += float(match.group(3))
    return figures


class RssWatch:
    """The server's RSS before, at its peak (sampled every 0.1 s) and after."""

    def __init__(self, pid: int | None):
        from rtbus.bench.probe import ServerProbe

        self.probe = ServerProbe(pid) if pid else None
        self.before = self.peak = self._now()
        self.after = None

    def _now(self) -> int | None:
        sample = self.probe.sample() if self.probe is not None else None
        return sample["rss_kb"] if sample else None

    def run(self, stop: threading.Event) -> None:
        while self.probe is not None and not stop.wait(0.1):
            now = self._now()
            if now is not None and (self.peak is None or now > self.peak):
                self.peak = now


def run(args) -> dict:
    drill = Drill(args)
    rss = RssWatch(args.server_pid)
    before = scrape(args.host, args.port)
    ready = threading.Barrier(args.subscribers + 2)
    threads = [threading.Thread(target=drill.subscriber, args=(ready,), daemon=True)
               for _ in range(args.subscribers)]
    threads.append(threading.Thread(target=drill.publisher, args=(ready,), daemon=True))
    for thread in threads:
        thread.start()
    try:
        ready.wait(timeout=30)
    except threading.BrokenBarrierError:
        drill.stop.set()
        raise SystemExit("rtbus-bench abuse: the subscribers or the publisher did not start")
    attacks = [name.strip() for name in args.attacks.split(",") if name.strip()]
    targets = {"slowloris": drill.slowloris, "heads": drill.heads, "bodies": drill.bodies,
               "sids": drill.sids, "cross-origin": drill.cross_origin, "frames": drill.frames}
    workers = [threading.Thread(target=targets[name], daemon=True) for name in attacks]
    workers.append(threading.Thread(target=drill.probe_health, daemon=True))
    workers.append(threading.Thread(target=rss.run, args=(drill.stop,), daemon=True))
    for worker in workers:
        worker.start()
    drill.stop.wait(args.duration)
    drill.stop.set()
    for worker in [*workers, *threads]:
        worker.join(timeout=HEAD_TIMEOUT + 10)
    rss.after = rss._now()
    after = scrape(args.host, args.port)
    lost = [nid for nid in drill.published if drill.received[nid] < args.subscribers]
    return {
        "health": {"probes": len(drill.health) + drill.health_failures, "failed": drill.health_failures,
                   "p50_s": percentile(drill.health, 0.5), "max_s": max(drill.health, default=None)},
        "subscribers": {"count": args.subscribers, "published": len(drill.published),
                        # the last ones may still be on their way when the drill stops
                        "incomplete": len(lost), "p50_s": percentile(drill.latencies, 0.5),
                        "p99_s": percentile(drill.latencies, 0.99)},
        "attacks": {name: dict(counter) for name, counter in sorted(drill.tally.counts.items())},
        "server_counters": {key: after.get(key, 0) - before.get(key, 0)
                            for key in sorted(set(after) | set(before))
                            if after.get(key, 0) != before.get(key, 0)},
        "rss_mib": {key: (None if value is None else round(value / 1024, 1))
                    for key, value in (("before", rss.before), ("peak", rss.peak), ("after", rss.after))},
    }


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def write(report: dict) -> None:
    health, subs = report["health"], report["subscribers"]
    print(f"health: {health['probes']} probes, {health['failed']} failed, p50 {_ms(health['p50_s'])}, "
          f"max {_ms(health['max_s'])}")
    print(f"subscribers: {subs['count']} x {subs['published']} notifications, {subs['incomplete']} "
          f"not received by all, latency p50 {_ms(subs['p50_s'])}, p99 {_ms(subs['p99_s'])}")
    for attack, outcomes in report["attacks"].items():
        print(f"{attack}: " + ", ".join(f"{outcome} x{count}" for outcome, count in sorted(outcomes.items())))
    print("server counters: " + (", ".join(f"{key} +{value:g}" for key, value in
                                           report["server_counters"].items()) or "none moved"))
    rss = report["rss_mib"]
    print(f"server RSS: before {rss['before']} MiB, peak {rss['peak']} MiB, after {rss['after']} MiB")


def main(argv) -> int:
    args = parse(argv)
    from rtbus.bench import probe as probes

    probes.raise_nofile_limit()
    report = run(args)
    write(report)
    if args.json:
        print(json.dumps(report))
    # Two publishes may still be in flight at the stop; more is a real loss.
    ok = report["health"]["failed"] == 0 and report["subscribers"]["incomplete"] <= 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
