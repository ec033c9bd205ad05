"""Measure what a few attacks on the evented port cost a running rtbus (before/after numbers).

Each attack is sent the way an attacker would send it, against a server that is already
running (prefork, so that the gevent process can be found under the master):

- ``cross-origin``: a page on another site opens /websocket with the victim's cookie,
  subscribes, and waits for a notification on the victim's partner channel.
- ``chunked``: one chunked POST of --chunked-mib MiB to /websocket/peek_notifications, sent
  as fast as the server reads it; prints the answer's status, how much was sent before
  it came, and the gevent process's RSS before, at its peak and after.
- ``sids``: --sids requests to /websocket/peek_notifications, each with a never-issued
  session id (random ones, then ones shaped like rtbus's own), --concurrency at a time;
  prints the answers by status, the database transactions they caused (pg_stat_database)
  and the worst /websocket/health?db_server_status=1 latency measured meanwhile.
- ``unknown-db``: a handshake and a JSON-RPC call naming a database that is not served;
  prints the status and whether the body shows a traceback or a served database's name.

    .venv/bin/python perf/edge_attacks.py --master-pid 1234 --port 8072 --db mydb

The database is reached with libpq's environment (PGHOST, PGPORT, PGUSER...) or --dsn.
Prints numbers only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import secrets
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg2  # noqa: E402
import websocket  # noqa: E402

from rtbus.bench.probe import resolve_server_pid  # noqa: E402
from rtbus.bus.publish import Notifier, Publisher  # noqa: E402
from rtbus.service.process import resident_memory as rss  # noqa: E402
from rtbus.session import create_session  # noqa: E402

PEEK_BODY = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                        "params": {"channels": [], "last": 0, "is_first_poll": True}}).encode()


def mib(value: float) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def peek(port: int, cookie: str | None = None, path: str = "/websocket/peek_notifications",
         timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    try:
        conn.request("POST", path, body=PEEK_BODY, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc).encode()
    finally:
        conn.close()


def health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/websocket/health?db_server_status=1")
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


# -- cross-origin --------------------------------------------------------------------------


def cross_origin(args, conn, publisher) -> None:
    sid = create_session(conn, 424242, 424243, ())
    conn.commit()
    ws = websocket.create_connection(f"ws://127.0.0.1:{args.port}/websocket", timeout=5,
                                     cookie=f"session_id={sid}", origin="https://evil.example")
    try:
        ws.send(json.dumps({"event_name": "subscribe", "data": {"channels": [], "last": 0}}))
        time.sleep(0.5)
        (notification_id,) = publisher.publish(conn, args.db, [(("res.partner", 424243),
                                                                "bench.private", {"secret": 1})])
        got = False
        ws.settimeout(2)
        try:
            while not got:
                got = any(n["id"] == notification_id for n in json.loads(ws.recv()))
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException,
                ValueError):
            pass
    finally:
        ws.close()
    print(f"cross-origin handshake reads the victim's partner channel: {'YES' if got else 'no'}")


# -- chunked body ----------------------------------------------------------------------------


def chunked(args, pid: int) -> None:
    before = rss(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=60)
    sock.sendall(b"POST /websocket/peek_notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b" " * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    answer = bytearray()
    answered = threading.Event()

    def read_answer():
        try:
            while b"\r\n" not in answer and (data := sock.recv(65536)):
                answer.extend(data)
        except OSError as exc:
            answer.extend(f"({exc})".encode())
        answered.set()

    reader = threading.Thread(target=read_answer, daemon=True)
    reader.start()
    sent = 0
    started = time.monotonic()
    try:
        while sent < args.chunked_mib << 20 and not answered.is_set():
            sock.sendall(frame)
            sent += len(chunk)
        if not answered.is_set():
            sock.sendall(b"0\r\n\r\n")
    except OSError as exc:
        answer.extend(f"(send: {exc})".encode())
    answered.wait(60)
    seconds = time.monotonic() - started
    sock.close()
    time.sleep(1.0)
    done.set()
    sampler.join()
    after = rss(pid)
    status_line = bytes(answer).split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"chunked {args.chunked_mib} MiB POST: answer {status_line!r} after {mib(sent)} sent "
          f"in {seconds:.2f} s")
    print(f"  gevent RSS before {mib(before)}, peak {mib(peak[0])} (+{mib(peak[0] - before)}), "
          f"after {mib(after)}")


# -- never-issued session ids ------------------------------------------------------------------


def transactions(conn, db: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (db,))
        (count,) = cur.fetchone()
    conn.rollback()
    return count


def settled_transactions(conn, db: str, wait: float) -> int:
    # Backends report their counters at most once a second, idle ones within 10 s.
    time.sleep(wait)
    return transactions(conn, db)


def rtbus_shaped_sid() -> str:
    return "rb1_" + base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=")


def sid_flood(args, conn, kind: str, make_sid) -> None:
    start = settled_transactions(conn, args.db, 11)
    statuses: dict[int, int] = {}
    worst = [0.0, 200]
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            t = time.monotonic()
            status = health(args.port)
            worst[0] = max(worst[0], time.monotonic() - t)
            if status != 200:
                worst[1] = status
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for status, _ in pool.map(lambda _: peek(args.port, f"session_id={make_sid()}"), range(args.sids)):
            statuses[status] = statuses.get(status, 0) + 1
    seconds = time.monotonic() - started
    stop.set()
    prober.join()
    spent = settled_transactions(conn, args.db, 11) - start
    shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
    print(f"{args.sids} {kind} sids in {seconds:.2f} s: answers {{{shown}}}; "
          f"{spent} database transactions; worst health {worst[0] * 1000:.0f} ms "
          f"(last non-200: {worst[1] if worst[1] != 200 else 'none'})")


# -- unknown database ------------------------------------------------------------------------


def unknown_db(args) -> None:
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /websocket?db=no_such_db HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Origin: http://127.0.0.1:{args.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n").encode())
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    sock.close()
    rpc_status, rpc_body = peek(args.port, path="/websocket/peek_notifications?db=no_such_db")
    for what, status, body in (("handshake", data.split(b" ", 2)[1:2], data),
                               ("JSON-RPC", [str(rpc_status).encode()], rpc_body)):
        print(f"unknown ?db= ({what}): status {status[0].decode() if status else '?'}, "
              f"traceback shown: {'YES' if b'Traceback' in body else 'no'}, "
              f"served database named: {'YES' if args.db.encode() in body else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master-pid", type=int, required=True)
    parser.add_argument("--port", type=int, default=8072, help="the longpolling port")
    parser.add_argument("--db", required=True, help="the served database")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* env)")
    parser.add_argument("--sids", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--chunked-mib", type=int, default=64)
    parser.add_argument("attacks", nargs="*", default=["cross-origin", "chunked", "sids", "unknown-db"])
    args = parser.parse_args()

    pid, _title = resolve_server_pid(args.master_pid)
    conn = psycopg2.connect(args.dsn, dbname=args.db)
    publisher = Publisher(Notifier())
    try:
        if "cross-origin" in args.attacks:
            cross_origin(args, conn, publisher)
        if "chunked" in args.attacks:
            chunked(args, pid)
        if "sids" in args.attacks:
            sid_flood(args, conn, "random", lambda: secrets.token_urlsafe(48))
            sid_flood(args, conn, "rtbus-shaped forged", rtbus_shaped_sid)
        if "unknown-db" in args.attacks:
            unknown_db(args)
    finally:
        publisher.notifier.close()
        conn.close()


if __name__ == "__main__":
    main()
